"""The nine VMamba models: equal to the official code (golden fixtures), official keys / shapes / parameter counts,
any input size, timm's model API."""
import pytest
import timm
import torch
import torch.nn.functional as F

import vssm
from conftest import load_fixture, load_keys, split_fixture
from vssm.layers import SS2D, DepthwiseConv2d, parse_forward_type

FIXTURES = ["vmamba_v0_reduced", "vmamba_v2_s2_reduced", "vmamba_v2v_s1_reduced"]
RELEASED = [
    "vanilla_vmamba_tiny", "vanilla_vmamba_small", "vanilla_vmamba_base",
    "vmamba_tiny_s2l5", "vmamba_small_s2l15", "vmamba_base_s2l15",
    "vmamba_tiny_s1l8", "vmamba_small_s1l20", "vmamba_base_s1l20",
]


def test_all_nine_registered():
    assert set(RELEASED) <= set(vssm.list_models("vmamba"))
    assert set(RELEASED) <= set(timm.list_models("*vmamba*"))


@pytest.mark.parametrize("name", FIXTURES)
@pytest.mark.parametrize("norm_layer", ["ln", "ln2d"], ids=["channel_last", "channel_first"])
def test_fixture_logits_and_stage_features(name, norm_layer):
    meta, tensors = load_fixture(name)
    state_dict, outputs = split_fixture(tensors)
    model = vssm.build_official("vmamba", **dict(meta["constructor_args"], norm_layer=norm_layer)).eval()
    assert list(model.state_dict()) == meta["state_dict_keys_in_order"]
    model.load_state_dict(state_dict, strict=True)
    with torch.no_grad():
        last, feats = model.forward_intermediates(outputs["__input__"])
        logits = model.forward_head(last)
        direct = model(outputs["__input__"])
    atol = meta["tolerance"]["atol"]
    torch.testing.assert_close(logits, outputs["__logits__"], rtol=0, atol=atol)
    torch.testing.assert_close(direct, logits)
    for i, feat in enumerate(feats):
        ref = outputs[f"__feat{i}__"]
        torch.testing.assert_close(feat, ref, rtol=0, atol=1e-4 * max(1.0, ref.abs().max().item()))


@pytest.mark.parametrize("name", RELEASED)
def test_released_keys_shapes_and_parameter_counts(name):
    official = load_keys(name)
    with torch.device("meta"):
        model = timm.create_model(name)
    ours = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert ours == official["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == official["num_params"]


@pytest.mark.parametrize("name", FIXTURES)
@pytest.mark.parametrize("size", [(33, 47), (17, 17), (40, 24)])
def test_odd_and_non_square_inputs(name, size):
    meta, tensors = load_fixture(name)
    state_dict, _ = split_fixture(tensors)
    outs = []
    for norm_layer in ("ln", "ln2d"):
        model = vssm.build_official("vmamba", **dict(meta["constructor_args"], norm_layer=norm_layer)).eval()
        model.load_state_dict(state_dict)
        x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            outs.append(model(x))
        assert outs[-1].shape == (1, 1000) and torch.isfinite(outs[-1]).all()
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-4)  # same function in both layouts


def small_model(**kw):
    return vssm.build_official(
        "vmamba", dims=16, depths=[1, 1, 2, 1], ssm_d_state=1, ssm_ratio=1.0, forward_type="v05_noz", mlp_ratio=4.0,
        norm_layer="ln2d", downsample_version="v3", patchembed_version="v2", ssm_conv_bias=False, **kw
    )


def test_timm_api_overrides_and_head():
    model = timm.create_model("vmamba_tiny_s1l8", num_classes=7, in_chans=1, drop_path_rate=0.05)
    assert model.patch_embed[0].in_channels == 1 and model.get_classifier().out_features == 7
    assert model.num_features == 768
    model = small_model(num_classes=5).eval()
    x = torch.randn(2, 3, 64, 48)
    feats = model.forward_features(x)
    assert feats.shape == (2, 128, 2, 2)
    pooled = model.forward_head(feats, pre_logits=True)
    assert pooled.shape == (2, 128)
    torch.testing.assert_close(model.forward_head(feats), model.get_classifier()(pooled))
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    model.reset_classifier(0)
    assert model(x).shape == (2, 128)


def test_features_only_and_intermediates():
    model = timm.create_model("vmamba_tiny_s1l8", features_only=True, out_indices=(1, 3), pretrained=False)
    feats = model(torch.randn(1, 3, 96, 64))
    assert [tuple(f.shape) for f in feats] == [(1, 192, 12, 8), (1, 768, 3, 2)]
    assert model.feature_info.channels() == [192, 768]
    cl = small_model().eval()
    cl_last = vssm.build_official("vmamba", **dict(small_model_args(), norm_layer="ln")).eval()
    cl_last.load_state_dict(cl.state_dict())
    x = torch.randn(1, 3, 32, 32)
    for fmt in ("NCHW", "NHWC"):
        a = cl.forward_intermediates(x, output_fmt=fmt, intermediates_only=True)
        b = cl_last.forward_intermediates(x, output_fmt=fmt, intermediates_only=True)
        for fa, fb in zip(a, b):
            torch.testing.assert_close(fa, fb, rtol=1e-4, atol=1e-4)
    assert a[0].shape == ((1, 8, 8, 16) if fmt == "NHWC" else (1, 16, 8, 8))


def small_model_args():
    return dict(dims=16, depths=[1, 1, 2, 1], ssm_d_state=1, ssm_ratio=1.0, forward_type="v05_noz", mlp_ratio=4.0,
                norm_layer="ln2d", downsample_version="v3", patchembed_version="v2", ssm_conv_bias=False)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = small_model(drop_path_rate=0.0)
    x = torch.randn(2, 3, 32, 40)
    model(x).square().mean().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).square().mean().backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[k], rtol=1e-5, atol=1e-6)
    assert all(g.abs().sum() > 0 for k, g in grads.items() if not k.startswith("classifier.head.bias"))


def test_no_weight_decay_names_the_ssm_parameters():
    model = small_model()
    names = model.no_weight_decay()
    assert "layers.0.blocks.0.op.A_logs" in names and "layers.2.blocks.1.op.Ds" in names
    assert "layers.3.blocks.0.op.dt_projs_bias" in names
    assert all(n in dict(model.named_parameters()) for n in names)
    assert not any("x_proj_weight" in n for n in names)


def test_official_initialisation():
    model = vssm.build_official("vmamba", dims=16, depths=[1, 1, 1, 1], ssm_d_state=4, forward_type="v0",
                                mlp_ratio=0.0, downsample_version="v1")
    op = model.layers[0].blocks[0].op
    torch.testing.assert_close(op.A_logs[5], torch.log(torch.arange(1, 5.0)))
    assert torch.all(op.Ds == 1)
    dt = torch.nn.functional.softplus(op.dt_projs_bias)
    assert dt.min() >= 1e-4 * 0.999 and dt.max() <= 0.1 * 1.001
    r = op.dt_rank
    assert op.dt_projs_weight.abs().max() <= r**-0.5
    assert op.x_proj_weight.abs().max() <= op.d_inner**-0.5
    assert model.classifier.head.bias.abs().sum() == 0 and model.layers[0].blocks[0].norm.weight.eq(1).all()
    std = op.in_proj.weight.std().item()
    assert 0.015 < std < 0.025  # trunc_normal(0.02) on every Linear


def test_training_step_and_bf16_model():
    model = small_model()
    out = model(torch.randn(2, 3, 32, 32))
    out.logsumexp(-1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    half = small_model().to(torch.bfloat16).eval()
    with torch.no_grad():
        y = half(torch.randn(1, 3, 32, 32, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = small_model().eval()(torch.randn(1, 3, 32, 32))
    assert torch.isfinite(y.float()).all()


@pytest.mark.parametrize("forward_type", ["v05", "v051d", "v052d", "v052dc_noz", "v2_no32_oact", "v3_noz_onnone",
                                          "v05_noz_onsoftmax", "v05_noz_ondwconv3", "v05_noz_oncnorm", "v05_nozact"])
def test_other_forward_types_run(forward_type):
    model = vssm.build_official("vmamba", dims=8, depths=[1, 1, 1, 1], ssm_d_state=2, forward_type=forward_type,
                                norm_layer="ln2d", downsample_version="v3", patchembed_version="v2")
    y = model(torch.randn(1, 3, 20, 28))
    assert y.shape == (1, 1000) and torch.isfinite(y).all()


def test_ablation_scan_orders_are_used():
    assert parse_forward_type("v051d").scan_order == "unidi"
    assert parse_forward_type("v052d_noz").scan_order == "bidi"
    assert parse_forward_type("v052dc").scan_order == "cascade"
    v = parse_forward_type("v2_no32_oact_noz")
    assert (v.force_fp32, v.out_act, v.gated) == (False, True, False)


def test_bad_configuration_errors():
    with pytest.raises(ValueError, match="unsupported SS2D forward_type 'xv1a'"):
        SS2D(d_model=8, forward_type="xv1a")
    with pytest.raises(ValueError, match="norm_layer must be"):
        vssm.build_official("vmamba", norm_layer="gn")
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['dimz'\\]"):
        vssm.build_official("vmamba", dimz=4)
    with pytest.raises(ValueError, match="unknown model family 'resnet'"):
        vssm.build_official("resnet")
    with pytest.raises(ValueError, match=r"expects images \(B, 3, H, W\)"):
        small_model()(torch.randn(1, 4, 32, 32))
    with pytest.raises(ValueError, match="unknown model 'vmamba_huge'"):
        vssm.create_model("vmamba_huge")


@pytest.mark.parametrize("norm_layer", ["ln", "ln2d"])
def test_channel_first_override_keeps_the_function(norm_layer):
    """channel_first= runs a model in the other layout than its norm_layer implies, with the same weights."""
    torch.manual_seed(1)
    kwargs = dict(dims=16, depths=[1, 1], ssm_d_state=1, ssm_ratio=1.0, forward_type="v05_noz", mlp_ratio=2.0,
                  norm_layer=norm_layer, downsample_version="v3", patchembed_version="v2", num_classes=5)
    native = vssm.build_official("vmamba", **kwargs).eval()
    other = vssm.build_official("vmamba", channel_first=norm_layer == "ln", **kwargs).eval()
    assert other.channel_first != native.channel_first
    other.load_state_dict(native.state_dict())
    x = torch.randn(2, 3, 37, 29)
    torch.testing.assert_close(other(x), native(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="needs the channel-first layout"):
        vssm.build_official("vmamba", **dict(kwargs, norm_layer="bn"), channel_first=False)


@pytest.mark.parametrize("layer", ["Linear2d", "PointwiseConv2d"])
def test_linear2d_gemm_path_matches_the_convolution(layer):
    """Under autocast (or in bf16) a channels_last Linear2d (2-D weight) or PointwiseConv2d (the ConvFFN's 4-D
    weight) runs as a GEMM over the channels: same numbers as the 1x1 convolution at bf16 precision, same layout,
    same gradients; fp32 keeps the convolution exactly."""
    import vssm.layers

    torch.manual_seed(0)
    lin = getattr(vssm.layers, layer)(24, 40)
    x = torch.randn(3, 24, 5, 7).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    ref = F.conv2d(x, lin.weight.reshape(40, 24, 1, 1), lin.bias)
    assert torch.equal(lin(x), ref)
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, (x, lin.weight, lin.bias), g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = lin(x)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y.float(), ref, rtol=2e-2, atol=2e-2)
    for got, want in zip(torch.autograd.grad(y, (x, lin.weight, lin.bias), g.to(y.dtype)), ref_grads):
        assert ((got.float() - want).abs().max() / want.abs().max()).item() < 1e-2  # bf16 rounding of the operands


@pytest.mark.parametrize(
    "kernel, stride, size, channels_last, explicit",
    [
        (3, 1, (2, 2), True, True),  # vmamba_femto's last stage at 28 px
        (3, 1, (1, 1), False, True),
        (3, 1, (2, 5), True, True),
        (3, 2, (2, 2), False, True),
        (7, 2, (4, 4), True, True),  # MSVMamba's strided 7x7 on a small map
        (5, 1, (3, 3), False, False),  # 5x5 on a (B, C, H, W) map keeps the padded convolution
        (3, 1, (7, 6), True, False),  # the map is not smaller than the kernel
    ],
)
def test_depthwise_conv_small_maps_match_the_padded_convolution(kernel, stride, size, channels_last, explicit):
    """DepthwiseConv2d pads a CPU map smaller than its kernel before convolving (a faster oneDNN path): the same
    output and gradients as the 'same'-padded nn.Conv2d with its weights, and the same state_dict."""
    torch.manual_seed(kernel * 10 + stride)
    conv = DepthwiseConv2d(12, kernel, stride)
    ref = torch.nn.Conv2d(12, 12, kernel, stride, (kernel - 1) // 2, groups=12)
    ref.load_state_dict(conv.state_dict())
    assert list(conv.state_dict()) == ["weight", "bias"]
    x = torch.randn(3, 12, *size, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    conv, ref = conv.double(), ref.double()
    assert conv.pads_explicitly(x) == explicit
    y, want = conv(x), ref(x)
    torch.testing.assert_close(y, want, rtol=0, atol=1e-12)
    g = torch.randn_like(want)
    got_grads = torch.autograd.grad(y, (x, conv.weight, conv.bias), g)
    for got, ref_grad in zip(got_grads, torch.autograd.grad(want, (x, ref.weight, ref.bias), g)):
        torch.testing.assert_close(got, ref_grad, rtol=0, atol=1e-12)


def _saved_bytes(fn, params):
    """Bytes of the tensors autograd keeps for the backward while fn() runs: each storage once, the parameters'
    own storages not counted (they exist anyway)."""
    storages = {}
    own = {p.untyped_storage().data_ptr() for p in params}

    def pack(t):
        if t.untyped_storage().data_ptr() not in own:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(storages.values())


@pytest.mark.parametrize("channel_first", [False, True])
@pytest.mark.parametrize("act", ["gelu", "silu", "gelu_tanh"])
def test_mlp_recomputes_its_activation_with_the_same_gradients(channel_first, act):
    """Mlp keeps fc1's output only (act(h) is recomputed in the backward): same output and gradients as the plain
    fc2(act(fc1(x))) in fp32 and under bf16 autocast, and less saved memory."""
    from vssm.layers import Mlp

    torch.manual_seed(1)
    act_layer = {"gelu": torch.nn.GELU, "silu": torch.nn.SiLU, "gelu_tanh": lambda: torch.nn.GELU(approximate="tanh")}[act]
    mlp = Mlp(12, 48, act_layer=act_layer, channel_first=channel_first)
    shape = (2, 12, 5, 7) if channel_first else (2, 5, 7, 12)
    x = torch.randn(shape)
    if channel_first:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    params = [x, mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias]

    def plain():
        return mlp.fc2(mlp.act(mlp.fc1(x)))

    for dtype, tol in ((None, 1e-6), (torch.bfloat16, 1e-2)):
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            ref, ref_bytes = _saved_bytes(plain, params)
            got, got_bytes = _saved_bytes(lambda: mlp(x), params)
        assert got.dtype == ref.dtype and got.shape == ref.shape
        torch.testing.assert_close(got, ref, rtol=tol, atol=tol)
        g = torch.randn_like(ref)
        for a, b in zip(torch.autograd.grad(got, params, g), torch.autograd.grad(ref, params, g)):
            assert a.dtype == b.dtype
            assert ((a.float() - b.float()).abs().max() / b.float().abs().max()).item() < tol
        if dtype is not None or not channel_first:  # fp32 channel-first keeps the 1x1 convs (plain path)
            hidden_bytes = x.numel() // 12 * 48 * ref.element_size()
            assert ref_bytes - got_bytes >= hidden_bytes


def test_mlp_with_recompute_compiles_without_graph_breaks():
    from vssm.layers import Mlp

    torch.manual_seed(2)
    mlp = Mlp(8, 32)
    x = torch.randn(2, 3, 3, 8, requires_grad=True)
    compiled = torch.compile(mlp, fullgraph=True, backend="aot_eager")
    g = torch.randn(2, 3, 3, 8)
    got = torch.autograd.grad(compiled(x), (x, mlp.fc2.weight), g)
    want = torch.autograd.grad(mlp.fc2(mlp.act(mlp.fc1(x))), (x, mlp.fc2.weight), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
