"""Vision Mamba (Vim): the released models' function, keys and shapes, checkpoints, any input size, the API."""
import argparse
import json
import os

import pytest
import timm
import timm.optim
import torch
import torch.nn.functional as F

import vssm
from vssm.layers.bimamba import BiMamba
from vssm.models.vim import VisionMamba, resize_pos_embed
from vssm.ops import selective_scan

from conftest import FIXTURES, load_fixture, split_fixture

VIM_FIXTURES = ["vim_p16_reduced", "vim_p16_stride8_reduced"]
RELEASED = sorted(p.stem for p in (FIXTURES / "keys").glob("vim_*.json"))
TINY = "vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2"


def _fixture_model(name: str):
    meta, tensors = load_fixture(name)
    state_dict, outputs = split_fixture(tensors)
    model = vssm.build_official("vim", **meta["constructor_args"]).eval()
    return model, meta, state_dict, outputs


@torch.no_grad()
def _perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every parameter off its init value (zeros, ones, log(1..N)) so that no bug hides behind one."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        big = name.rsplit(".", 1)[-1] in ("A_log", "A_b_log", "D", "D_b", "bias")
        p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * (0.3 if big else 0.02))
    return model


# ---- the official function ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VIM_FIXTURES)
def test_fixture_logits_match_official(name):
    model, meta, state_dict, outputs = _fixture_model(name)
    assert list(model.state_dict()) == meta["state_dict_keys_in_order"]
    assert sum(p.numel() for p in model.parameters()) == meta["num_params"]
    model.load_state_dict(state_dict, strict=True)
    with torch.no_grad():
        logits = model(outputs["__input__"])
    atol = meta["tolerance"]["atol"] * max(1.0, meta["logits_max_abs"])
    torch.testing.assert_close(logits, outputs["__logits__"], rtol=0, atol=atol)


@pytest.mark.parametrize("name", RELEASED)
def test_released_keys_shapes_and_params(name):
    meta = json.loads((FIXTURES / "keys" / f"{name}.json").read_text())
    assert meta["released_model"] in vssm.list_models("vim")
    with torch.device("meta"):
        model = timm.create_model(name)
        official = vssm.build_official("vim", **meta["constructor_args"])  # incl. the base's if_devide_out
    for m in (model, official):
        assert [[k, list(v.shape)] for k, v in m.state_dict().items()] == meta["state_dict"]
        assert sum(p.numel() for p in m.parameters()) == meta["num_params"]
    assert set(meta["constructor_args_via_kwargs"]) <= {"if_devide_out"}


def _two_pass_reference(mixer: BiMamba, h: torch.Tensor) -> torch.Tensor:
    """spec §4 written out: each direction on its own (causal conv, x_proj, dt_proj, sequential scan, gate), the
    backward one on the flipped sequence and flipped back, then (o_f + o_b) / 2 -> out_proj."""
    e, n, r = mixer.d_inner, mixer.d_state, mixer.dt_rank
    xz = (h @ mixer.in_proj.weight.T).transpose(1, 2)
    x, z = xz[:, :e], xz[:, e:]

    def direction(x, z, conv, x_proj, dt_proj, a_log, d):
        u = F.silu(F.conv1d(x, conv.weight, conv.bias, padding=3, groups=e)[..., : x.shape[-1]])
        dbl = torch.einsum("ce,bel->bcl", x_proj.weight, u)
        delta = torch.einsum("er,brl->bel", dt_proj.weight, dbl[:, :r])
        y = selective_scan(u, delta, -torch.exp(a_log), dbl[:, r : r + n], dbl[:, r + n :], d, dt_proj.bias,
                           delta_softplus=True, backend="reference")
        return y * F.silu(z)

    m = mixer
    out = direction(x, z, m.conv1d, m.x_proj, m.dt_proj, m.A_log, m.D)
    if m.directions == 2:
        back = direction(x.flip(-1), z.flip(-1), m.conv1d_b, m.x_proj_b, m.dt_proj_b, m.A_b_log, m.D_b).flip(-1)
        out = (out + back) / 2 if m.if_divide_out else out + back
    return out.transpose(1, 2) @ m.out_proj.weight.T


@pytest.mark.parametrize("kwargs", [{}, {"if_divide_out": False}, {"bimamba_type": "none"}])
def test_mixer_equals_two_pass_definition(kwargs):
    mixer = _perturb(BiMamba(24, d_state=16, **kwargs)).double()
    h = torch.randn(2, 37, 24, dtype=torch.float64)
    torch.testing.assert_close(mixer(h), _two_pass_reference(mixer, h), rtol=1e-8, atol=1e-8)


def test_backward_direction_sees_the_future():
    """The middle token gets the forward summary of the first half and the backward one of the second half."""
    model, *_ = _fixture_model("vim_p16_reduced")
    _perturb(model)
    x = torch.randn(1, 3, 64, 64)
    x2 = x.clone()
    x2[..., 48:, :] += 1.0  # the last grid row: patches after the middle class token
    forward_only = vssm.build_official("vim", **dict(_fixture_model("vim_p16_reduced")[1]["constructor_args"],
                                                     bimamba_type="none")).eval()
    _perturb(forward_only)

    def class_token_change(m):
        with torch.no_grad():
            return (m.forward_head(m.forward_features(x), True) - m.forward_head(m.forward_features(x2), True)).abs().max()

    assert class_token_change(model) > 1e-3
    assert class_token_change(forward_only) == 0  # the official slow path's function: causal, blind to the future


# ---- any input size -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(80, 48), (65, 97), (16, 16)])
def test_odd_and_non_square_sizes(size):
    model, _, state_dict, _ = _fixture_model("vim_p16_reduced")
    model.load_state_dict(state_dict)
    with torch.no_grad():
        feats = model.forward_features(torch.randn(2, 3, *size))
        logits = model.forward_head(feats)
    grid = ((size[0] - 16) // 16 + 1) * ((size[1] - 16) // 16 + 1)
    assert feats.shape == (2, grid + 1, 64) and logits.shape == (2, 1000)
    assert torch.isfinite(logits).all()


def test_pos_embed_resize_keeps_class_slot_and_roundtrips():
    model, _, state_dict, _ = _fixture_model("vim_p16_reduced")
    pos = state_dict["pos_embed"]  # (1, 17, 64): 4x4 grid, class slot at 8
    assert torch.equal(resize_pos_embed(pos, (4, 4), (4, 4)), pos)
    big = resize_pos_embed(pos, (4, 4), (5, 7))
    assert big.shape == (1, 36, 64)
    assert torch.equal(big[:, 35 // 2], pos[:, 8])  # the class slot moves to the new middle, unchanged
    # a checkpoint trained at 64 px loads into a model built for 80x112 and computes what the 64 px model
    # computes on 80x112 images (runtime resizing and load-time resizing agree)
    model.load_state_dict(state_dict)
    args = dict(json.loads((FIXTURES / "vim_p16_reduced.json").read_text())["constructor_args"], img_size=(80, 112))
    other = vssm.build_official("vim", **args).eval()
    other.load_state_dict(VisionMamba.checkpoint_filter_fn(state_dict, other))
    x = torch.randn(1, 3, 80, 112)
    with torch.no_grad():
        torch.testing.assert_close(other(x), model(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "options, readout",
    [
        (dict(if_cls_token=False, final_pool_type="mean"), lambda f: f.mean(1)),
        (dict(if_cls_token=False, final_pool_type="none"), lambda f: f[:, -1]),
        (dict(use_middle_cls_token=False), lambda f: f[:, 0]),
        (dict(use_double_cls_token=True), lambda f: (f[:, 0] + f[:, -1]) / 2),
        (dict(rms_norm=False, init_layer_scale=0.1, if_abs_pos_embed=False), lambda f: f[:, f.shape[1] // 2]),
    ],
)
def test_other_official_options(options, readout):
    model = VisionMamba(img_size=32, depth=2, embed_dim=32, num_classes=5, **options).eval()
    x = torch.randn(2, 3, 48, 32)
    with torch.no_grad():
        feats = model.forward_features(x)
        torch.testing.assert_close(model.forward_head(feats, pre_logits=True), readout(feats))
        assert model(x).shape == (2, 5)
    keys = set(model.state_dict())
    assert ("cls_token_head" in keys) == bool(options.get("use_double_cls_token"))
    assert ("pos_embed" in keys) == options.get("if_abs_pos_embed", True)


# ---- checkpoints ----------------------------------------------------------------------------------------------


def _official_file(path, state_dict, ema=None):
    ckpt = {
        "model": state_dict,
        "model_ema": ema if ema is not None else state_dict,
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]},
        "lr_scheduler": {"base_lrs": [1e-3]},
        "epoch": 299,
        "scaler": {"scale": 65536.0},
        "args": argparse.Namespace(model=TINY, batch_size=128, lr=5e-4, no_amp=True),
    }
    torch.save(ckpt, path)
    return path


def test_official_training_file_loads_with_key_choice(tmp_path):
    model, _, state_dict, outputs = _fixture_model("vim_p16_reduced")
    ema = {k: v + 0.01 for k, v in state_dict.items()}
    path = _official_file(tmp_path / "vim_t_midclstok_76p1acc.pth", state_dict, ema)
    vssm.load_checkpoint(model, str(path))  # auto: 'model'
    assert torch.equal(model.pos_embed, state_dict["pos_embed"])
    with torch.no_grad():
        torch.testing.assert_close(model(outputs["__input__"]), outputs["__logits__"], rtol=0, atol=1e-4)
    vssm.load_checkpoint(model, str(path), key="model_ema")
    assert torch.equal(model.pos_embed, ema["pos_embed"])


def test_checkpoint_of_another_stride_loads_via_pos_embed_resize(tmp_path):
    model, *_ = _fixture_model("vim_p16_stride8_reduced")  # 7x7 grid, 50 tokens
    _, tensors = load_fixture("vim_p16_reduced")  # 4x4 grid, 17 tokens
    path = _official_file(tmp_path / "p16.pth", split_fixture(tensors)[0])
    vssm.load_checkpoint(model, str(path))
    assert model.pos_embed.shape == (1, 50, 64)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_without_running(tmp_path):
    model, _, state_dict, _ = _fixture_model("vim_p16_reduced")
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": state_dict, "args": _Evil(marker)}, path)
    with pytest.raises(vssm.CheckpointError, match="refused"):
        vssm.load_checkpoint(model, str(path))
    assert not marker.exists()


def test_mismatched_checkpoint_names_the_model_that_fits(tmp_path):
    with torch.device("meta"):
        small, tiny = timm.create_model(TINY.replace("tiny", "small")), timm.create_model(TINY)
    tiny_state = {k: torch.zeros(v.shape) for k, v in tiny.state_dict().items()}
    path = _official_file(tmp_path / "tiny.pth", tiny_state)
    with pytest.raises(vssm.CheckpointError, match="mis-shaped") as err:
        vssm.load_checkpoint(small, str(path))
    assert TINY in str(err.value)


def test_pretrained_downloads_from_the_hub_and_loads(tmp_path, monkeypatch):
    import timm.models._hub as hub

    source = timm.create_model(TINY, depth=2)
    path = _official_file(tmp_path / "vim_t_midclstok_76p1acc.pth", source.state_dict())
    calls = []

    def fake_download(repo, filename, revision=None, cache_dir=None):
        calls.append((repo, filename))
        return str(path)

    monkeypatch.setattr(hub, "hf_hub_download", fake_download)
    model = timm.create_model(TINY, pretrained=True, depth=2)
    assert calls == [("hustvl/Vim-tiny-midclstok", "vim_t_midclstok_76p1acc.pth")]
    for (k, a), b in zip(model.state_dict().items(), source.state_dict().values()):
        assert torch.equal(a, b), k
    # another number of classes: everything but the head from the file
    ten = timm.create_model(TINY, pretrained=True, depth=2, num_classes=10)
    assert ten.head.out_features == 10 and torch.equal(ten.pos_embed, source.pos_embed)
    # features_only: the weights are loaded before the model is wrapped
    feats = timm.create_model(TINY, pretrained=True, depth=2, features_only=True, out_indices=(0, 1))
    maps = feats(torch.randn(1, 3, 64, 96))
    assert [tuple(m.shape) for m in maps] == [(1, 192, 4, 6)] * 2
    with pytest.raises(RuntimeError, match="No pretrained weights"):  # the base file name is not known
        timm.create_model(TINY.replace("tiny", "base").replace("midclstok", "middle_cls_token"), pretrained=True, depth=1)


# ---- training, API, errors ------------------------------------------------------------------------------------


def test_gradients_flow_to_every_parameter_and_checkpointing_agrees():
    model, _, state_dict, _ = _fixture_model("vim_p16_reduced")
    model.load_state_dict(state_dict)
    model.train()
    x, target = torch.randn(2, 3, 48, 64), torch.tensor([1, 7])

    def grads():
        model.zero_grad()
        F.cross_entropy(model(x), target).backward()
        return {k: p.grad.clone() for k, p in model.named_parameters()}

    plain = grads()
    for name, g in plain.items():
        assert torch.isfinite(g).all() and g.abs().sum() > 0, name
    model.set_grad_checkpointing(True)
    for name, g in grads().items():
        torch.testing.assert_close(g, plain[name], rtol=1e-4, atol=1e-6)


def test_timm_model_api():
    model, meta, state_dict, outputs = _fixture_model("vim_p16_reduced")
    model.load_state_dict(state_dict)
    x = outputs["__input__"]
    with torch.no_grad():
        feats = model.forward_features(x)
        pooled = model.forward_head(feats, pre_logits=True)
    assert feats.shape == (2, 17, 64) and model.num_features == 64
    torch.testing.assert_close(pooled, feats[:, 8])  # the middle class token
    assert {"pos_embed", "cls_token"} <= model.no_weight_decay()
    groups = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05).param_groups
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    final, [(last, prefix)] = model.forward_intermediates(x, indices=1, norm=True, output_fmt="NLC",
                                                         return_prefix_tokens=True)
    torch.testing.assert_close(final, feats)
    torch.testing.assert_close(torch.cat([last[:, :8], prefix, last[:, 8:]], dim=1), feats)
    maps = model.forward_intermediates(x, indices=[0, 2], intermediates_only=True)
    assert [tuple(m.shape) for m in maps] == [(2, 64, 4, 4)] * 2
    model.reset_classifier(10)
    assert model(x).shape == (2, 10) and model.get_classifier().out_features == 10
    model.reset_classifier(0, global_pool="avg")
    torch.testing.assert_close(model(x), model.forward_features(x).mean(1))
    one_channel = timm.create_model(TINY, in_chans=1, depth=1, num_classes=3, img_size=32)
    assert one_channel(torch.randn(1, 1, 32, 48)).shape == (1, 3)


def test_bad_inputs_raise_clear_errors():
    model, *_ = _fixture_model("vim_p16_reduced")
    with pytest.raises(ValueError, match=r"expects images \(B, 3, H, W\)"):
        model(torch.randn(2, 1, 64, 64))
    with pytest.raises(ValueError, match=r"expects images"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="at least 16x16"):
        model(torch.randn(1, 3, 8, 64))
    with pytest.raises(TypeError, match="unexpected keyword"):
        VisionMamba(depth=1, embed_dim=16, img_sise=64)
    with pytest.raises(NotImplementedError, match="if_rope"):
        VisionMamba(depth=1, embed_dim=16, if_rope=True)
    with pytest.raises(NotImplementedError, match="v1"):
        VisionMamba(depth=1, embed_dim=16, bimamba_type="v1")
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(5, global_pool="cls")
