"""The Triton kernels against the torch backend: on a GPU when there is one, otherwise on the CPU under
TRITON_INTERPRET=1 (set by conftest.py before vssm is imported) with small shapes. GPU-only checks at full size are
marked `gpu` and skip without CUDA (run them with `pytest -m gpu` on the device tool)."""

import contextlib

import pytest
import torch

from conftest import load_fixture, requires_cuda, split_fixture
import vssm
from vssm.ops import selective_scan
from vssm.ops.ss2d_scan import ss2d_scan
from vssm.ops.triton_ops import HAS_TRITON, triton_usable

DEV = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    not (HAS_TRITON and triton_usable(torch.empty(0, device=DEV))),
    reason="needs triton with CUDA or TRITON_INTERPRET=1",
)
NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


def grads(fn, leaves, dout):
    leaves = [t.detach().clone().requires_grad_(True) for t in leaves]
    y = fn(*leaves)
    y.backward(dout.to(y.dtype))
    return y.detach(), [t.grad for t in leaves]


def plain_inputs(batch, k, d, n, length, seed):
    g = torch.Generator().manual_seed(seed)
    ch = k * d
    t = [torch.randn(batch, ch, length, generator=g), 0.5 * torch.randn(batch, ch, length, generator=g),
         -torch.exp(0.5 * torch.randn(ch, n, generator=g)), torch.randn(batch, k, n, length, generator=g),
         torch.randn(batch, k, n, length, generator=g), torch.randn(ch, generator=g),
         torch.rand(ch, generator=g) * 2.5 - 2]
    return [x.to(DEV) for x in t], torch.randn(batch, ch, length, generator=g).to(DEV)


@pytest.mark.parametrize("shape", [(2, 2, 3, 1, 7), (1, 4, 5, 1, 70), (2, 2, 16, 1, 130), (1, 2, 8, 1, 128), (2, 1, 3, 4, 33), (1, 2, 4, 2, 65)],
                         ids=lambda s: "b{}k{}d{}n{}l{}".format(*s))
def test_plain_kernel_matches_torch_backend(shape):
    inputs, dout = plain_inputs(*shape, seed=sum(shape))
    ref_y, ref_g = grads(lambda *a: selective_scan(*a, backend="torch"), [t.double() for t in inputs], dout.double())
    y, g = grads(lambda *a: selective_scan(*a, backend="triton"), inputs, dout)
    assert rel(y, ref_y) < 1e-5
    for name, a, b in zip(NAMES, g, ref_g):
        assert rel(a, b) < 1e-5, name


def cross_op_inputs(E, H, W, R, seed, N=1):
    """Fresh random operands (u, x_dbl, dt_weight, dt_bias, A, D) of the fused op at batch 2, and an output grad."""
    g = torch.Generator().manual_seed(seed)
    t = [torch.randn(2, E, H, W, generator=g), torch.randn(2, 4 * (R + 2 * N), H, W, generator=g),
         0.5 * torch.randn(4, E, R, generator=g), torch.rand(4, E, generator=g) - 1,
         -torch.exp(0.5 * torch.randn(4 * E, N, generator=g)), torch.randn(4 * E, generator=g),
         torch.randn(2, E, H, W, generator=g)]
    t = [x.to(DEV) for x in t]
    return t[:6], t[6]


def composition(*args):
    return ss2d_scan(*args[:6], order=args[6], backend="torch")


def fused(*args):
    return ss2d_scan(*args[:6], order=args[6], backend="triton")


@pytest.mark.parametrize(
    "case",
    [(2, 5, 3, 4, 1, 2, "cross2d", False), (1, 6, 9, 8, 1, 3, "cross2d", True), (1, 4, 3, 5, 2, 2, "bidi", False),
     (1, 3, 4, 3, 1, 2, "unidi", True), (1, 16, 5, 7, 1, 3, "cross2d", True), (1, 5, 16, 8, 1, 2, "cross2d", True)],
    ids=["cross2d", "cross2d_channels_last_multichunk", "bidi_n2", "unidi", "cross2d_channels_a_block_multiple",
         "cross2d_length_a_block_multiple"],
)
def test_fused_ss2d_matches_composition(case):
    B, E, H, W, N, R, order, channels_last = case
    g = torch.Generator().manual_seed(B * E * H * W)
    u = torch.randn(B, E, H, W, generator=g)
    if channels_last:
        u = u.contiguous(memory_format=torch.channels_last)
    params = [0.3 * torch.randn(4, R + 2 * N, E, generator=g), 0.5 * torch.randn(4, E, R, generator=g),
              torch.rand(4, E, generator=g) - 1, 0.5 * torch.randn(4 * E, N, generator=g), torch.randn(4 * E, generator=g)]
    dout = torch.randn(B, E, H, W, generator=g).to(DEV)
    leaves = [t.to(DEV) for t in [u] + params]
    ref_y, ref_g = grads(lambda *a: composition(*a, order), [t.double() for t in leaves], dout.double())
    y, gr = grads(lambda *a: fused(*a, order), leaves, dout)
    assert rel(y, ref_y) < 1e-5
    for name, a, b in zip(("u", "x_proj", "dt_w", "dt_b", "A_logs", "D"), gr, ref_g):
        assert rel(a, b) < 1e-5, name


def test_model_uses_fused_path_and_matches(monkeypatch):
    # exact fp32 convolutions: with cuDNN's TF32 the two paths' ~1e-7 differences come back from the convs as 1e-4
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    kw = dict(dims=8, depths=[1, 1, 1, 1], ssm_d_state=1, forward_type="v05_noz", norm_layer="ln2d",
              downsample_version="v3", patchembed_version="v2", drop_path_rate=0.0)
    ref = vssm.build_official("vmamba", scan_backend="torch", **kw).to(DEV)
    tri = vssm.build_official("vmamba", scan_backend="triton", **kw).to(DEV)
    tri.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 36, 28, device=DEV)
    out = []
    for model in (ref, tri):
        y = model(x)
        y.square().sum().backward()
        out.append((y.detach(), [p.grad for p in model.parameters()]))
    assert rel(out[1][0], out[0][0]) < 1e-5
    for a, b in zip(out[1][1], out[0][1]):
        assert rel(a, b) < 1e-4


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_layer_norm_kernel(out_dtype):
    """The forward kernel (on CPU under the interpreter) is PyTorch's LayerNorm in fp32, written in the dtype the
    next op consumes."""
    from vssm.ops import layer_norm

    x = torch.randn(2, 5, 7, 96, device=DEV)
    w, b = torch.randn(96, device=DEV), torch.randn(96, device=DEV)
    y = layer_norm._ln_forward(x, w, b, 1e-5, out_dtype)[0]
    ref = torch.nn.functional.layer_norm(x, (96,), w, b, 1e-5).to(out_dtype)
    assert y.dtype == out_dtype
    assert rel(y, ref) < (1e-5 if out_dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("channels,out_dtype", [(96, torch.float32), (80, torch.float16), (192, torch.bfloat16)])
def test_layer_norm_autograd_kernels_match_pytorch(channels, out_dtype):
    """Under autograd the forward and backward kernels (through an autograd.Function) give PyTorch's LayerNorm and
    its gradients, for non-power-of-two widths and a low-precision output (the grad then arrives in that dtype)."""
    from vssm.ops import layer_norm

    x = torch.randn(3, 5, 7, channels, device=DEV)
    w, b = 1 + 0.1 * torch.randn(channels, device=DEV), 0.1 * torch.randn(channels, device=DEV)
    dout = torch.randn(x.shape, device=DEV)
    ours = grads(lambda *t: layer_norm._LayerNormFn.apply(*t, 1e-5, out_dtype), [x, w, b], dout)
    ref = grads(lambda *t: torch.nn.functional.layer_norm(t[0], (channels,), t[1], t[2], 1e-5).to(out_dtype),
                [x, w, b], dout)
    tol = 1e-5 if out_dtype == torch.float32 else 1e-2
    assert ours[0].dtype == out_dtype and rel(ours[0], ref[0]) < tol
    for a, r in zip(ours[1], ref[1]):
        assert rel(a, r) < 1e-4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the LayerNorm kernels serve CUDA tensors only")
@pytest.mark.gpu
def test_layer_norm_dispatch_on_cuda(monkeypatch):
    """Eager autograd records the kernels' Function from GRAD_KERNEL_MIN_ELEMENTS on and PyTorch's op below,
    no-grad calls launch the kernel alone, meta tensors (FLOP counting) get PyTorch's op."""
    from vssm.ops import layer_norm

    x = torch.randn(3, 4, 96, device=DEV, requires_grad=True)
    w, b = (torch.randn(96, device=DEV, requires_grad=True) for _ in range(2))
    assert x.numel() < layer_norm.GRAD_KERNEL_MIN_ELEMENTS
    assert "NativeLayerNorm" in type(layer_norm.layer_norm_last_dim(x, w, b, 1e-5).grad_fn).__name__
    monkeypatch.setattr(layer_norm, "GRAD_KERNEL_MIN_ELEMENTS", x.numel())
    assert type(layer_norm.layer_norm_last_dim(x, w, b, 1e-5).grad_fn).__name__ == "_LayerNormFnBackward"
    with torch.no_grad():
        assert layer_norm.layer_norm_last_dim(x, w, b, 1e-5).grad_fn is None
    meta = layer_norm.layer_norm_last_dim(x.detach().to("meta"), w.detach().to("meta"), b.detach().to("meta"), 1e-5)
    assert meta.is_meta and meta.shape == x.shape


def test_compiles_without_graph_breaks():
    model = vssm.build_official("vmamba", dims=8, depths=[1, 1, 1, 1], ssm_d_state=1, forward_type="v05_noz",
                                norm_layer="ln2d", downsample_version="v3", patchembed_version="v2",
                                scan_backend="triton").to(DEV).eval()
    x = torch.randn(1, 3, 32, 32, device=DEV)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


def test_compiled_training_matches_eager():
    """Under autograd the fused op's forward keeps the chunk-start states as a second output: its fake
    implementation has to give their shape for torch.compile to trace forward and backward in one graph."""
    from vssm.ops.triton_ops import cross_selective_scan

    leaves, dout = cross_op_inputs(E=6, H=9, W=7, R=2, seed=3)
    eager = grads(cross_selective_scan, leaves, dout)
    compiled = grads(torch.compile(cross_selective_scan, fullgraph=True, backend="aot_eager"), leaves, dout)
    assert rel(compiled[0], eager[0]) < 1e-6
    for a, b in zip(compiled[1], eager[1]):
        assert rel(a, b) < 1e-6
    # the fake implementation's outputs (states included) against the real ones, and the autograd registration
    leaves = [t.requires_grad_(True) for t in leaves]
    torch.library.opcheck(torch.ops.vssm.cross_selective_scan.default, (*leaves, "cross2d", True),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


@pytest.mark.parametrize("order,H,W", [("cross2d", 9, 8), ("unidi", 1, 70)])
def test_kept_states_equal_recomputed(monkeypatch, order, H, W):
    """The chunk-start states the forward keeps for the backward equal those the backward would recompute (a
    partial last chunk included), and the gradients through either are the same."""
    from vssm.ops import triton_ops

    args, dy = cross_op_inputs(E=6, H=H, W=W, R=3, seed=H * W)
    u = args[0]
    y, kept = triton_ops._cross_forward(*args, order, keep_states=True)
    op, _ = triton_ops._cross_scan_op(*args, order, dt_gemm=False)
    recomputed, _ = triton_ops._run_starts(op, op.config(backward=True), 1)
    assert kept is not None and kept.shape == recomputed.shape
    torch.testing.assert_close(kept, recomputed, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y, triton_ops._cross_forward(*args, order)[0], rtol=1e-6, atol=1e-6)  # atomics order
    with_kept = triton_ops._cross_backward_op(dy, *args, kept, order)
    monkeypatch.setattr(triton_ops, "KEEP_STATES", False)
    assert triton_ops._cross_forward(*args, order, keep_states=True)[1] is None
    without = triton_ops._cross_backward_op(dy, *args, triton_ops._no_states(u), order)
    for a, b in zip(with_kept, without):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fused_ss2d_half_inputs_match_fp32_composition():
    """16-bit maps (autocast training): the backward writes dL/dz in bf16 and runs its GEMMs in bf16 (fp32
    accumulation); forward and every gradient stay within bf16 rounding of the fp64 composition."""
    B, E, H, W, N, R = 1, 16, 8, 8, 1, 3
    g = torch.Generator().manual_seed(7)
    u = torch.randn(B, E, H, W, generator=g).contiguous(memory_format=torch.channels_last)
    params = [0.3 * torch.randn(4, R + 2 * N, E, generator=g), 0.5 * torch.randn(4, E, R, generator=g),
              torch.rand(4, E, generator=g) - 1, 0.5 * torch.randn(4 * E, N, generator=g), torch.randn(4 * E, generator=g)]
    dout = torch.randn(B, E, H, W, generator=g).to(DEV)
    leaves = [t.to(DEV) for t in [u] + params]
    ref_y, ref_g = grads(lambda *a: composition(*a, "cross2d"), [t.double() for t in leaves], dout.double())
    half = [leaves[0].to(torch.bfloat16)] + leaves[1:]
    with torch.autocast(torch.device(DEV).type, dtype=torch.bfloat16):  # as in the model: x_proj's GEMM in bf16
        y, gr = grads(lambda *a: fused(*a, "cross2d"), half, dout)
    assert rel(y, ref_y) < 2e-2
    for name, a, b in zip(("u", "x_proj", "dt_w", "dt_b", "A_logs", "D"), gr, ref_g):
        assert rel(a, b) < 3e-2, name


@requires_cuda
@pytest.mark.gpu
def test_gpu_vmamba_tiny_and_fixtures():
    torch.backends.cudnn.allow_tf32 = False
    ref = vssm.create_model("vmamba_tiny_s1l8", scan_backend="torch", drop_path_rate=0.0).cuda().eval()
    tri = vssm.create_model("vmamba_tiny_s1l8", drop_path_rate=0.0).cuda().eval()
    tri.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 224, 224, device="cuda")
    with torch.no_grad():
        assert rel(tri(x), ref(x)) < 1e-4
    for name in ("vmamba_v0_reduced", "vmamba_v2_s2_reduced", "vmamba_v2v_s1_reduced"):
        meta, tensors = load_fixture(name)
        sd, outs = split_fixture(tensors)
        model = vssm.build_official("vmamba", **meta["constructor_args"]).cuda().eval()
        model.load_state_dict(sd)
        with torch.no_grad():
            logits = model(outs["__input__"].cuda()).cpu()
        torch.testing.assert_close(logits, outs["__logits__"], rtol=0, atol=meta["tolerance"]["atol"])
    torch.backends.cudnn.allow_tf32 = True


def test_split_sequences_match(monkeypatch):
    """Short chunks and one chunk per program: the run summaries / start-state chaining give the same results."""
    from vssm.ops import triton_ops

    configs = {key: dict(cfg) for key, cfg in triton_ops.CONFIGS.items()}
    for key in configs:
        configs[key]["BLOCK_L"] = 16
        if not key[1]:
            configs[key]["CPP"] = 1
    monkeypatch.setattr(triton_ops, "CONFIGS", configs)
    test_fused_ss2d_matches_composition((1, 6, 9, 8, 1, 3, "cross2d", True))
    test_plain_kernel_matches_torch_backend((1, 4, 5, 1, 70))


@pytest.mark.parametrize("case", [(2, 5, 3, 4, 1, 2, "cross2d", False), (1, 6, 9, 8, 1, 3, "cross2d", True),
                                  (1, 4, 3, 5, 2, 2, "bidi", False)], ids=["cross2d", "channels_last", "bidi_n2"])
def test_dt_projection_as_gemm_matches(monkeypatch, case):
    """Ranks from DT_GEMM_MIN_RANK (forward) / BWD_DT_GEMM_MIN_RANK (backward) on: the dt projection runs as a
    GEMM before the kernels, which read its result z."""
    from vssm.ops import triton_ops

    monkeypatch.setattr(triton_ops, "DT_GEMM_MIN_RANK", 1)
    monkeypatch.setattr(triton_ops, "BWD_DT_GEMM_MIN_RANK", 1)
    test_fused_ss2d_matches_composition(case)


if HAS_TRITON:
    import triton
    import triton.language as tl

    from vssm.ops.triton_scan import _divmod

    @triton.jit(do_not_specialize=["n"])  # like the scan kernels' H, W: n == 1 must not become a constant
    def _divmod_kernel(p_ptr, q_ptr, r_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        q, r = _divmod(tl.load(p_ptr + offs), n)
        tl.store(q_ptr + offs, q)
        tl.store(r_ptr + offs, r)


def test_pixel_divmod_exact():
    """The kernels' fp32-reciprocal p // n, p % n is exact for every position below MAX_LENGTH (n up to 2**19)."""
    from vssm.ops import triton_ops

    block = 1 << 16 if DEV == "cpu" else 1024
    p = torch.arange(triton_ops.MAX_LENGTH, device=DEV, dtype=torch.int32)
    for n in (1, 3, 7, 47, 56, 97, 1000, 1023, 4096, 65535, 1 << 19):
        q, r = torch.empty_like(p), torch.empty_like(p)
        _divmod_kernel[(p.numel() // block,)](p, q, r, n, BLOCK=block)
        assert torch.equal(q, p // n), n
        assert torch.equal(r, p % n), n


def test_too_long_sequence_is_a_clear_error():
    from vssm.ops import triton_ops

    side = 1024  # 1024 x 1024 = MAX_LENGTH positions
    u = torch.randn(1, 1, side, side, device=DEV)
    x_dbl = torch.randn(1, 4 * 3, side, side, device=DEV)
    with pytest.raises(ValueError, match="backend='torch'"):
        triton_ops.cross_selective_scan(u, x_dbl, torch.randn(4, 1, 1, device=DEV), torch.zeros(4, 1, device=DEV),
                                        -torch.ones(4, 1, device=DEV), torch.ones(4, device=DEV))


def test_eager_calls_skip_the_op_dispatch_with_the_same_result(monkeypatch):
    """Eager calls launch the kernels directly (host time), with gradients through an autograd.Function; under a
    dispatch mode or torch.compile they go through the registered custom op. All give the same numbers."""
    from torch.utils.flop_counter import FlopCounterMode

    from vssm.ops import triton_ops

    args, dout = cross_op_inputs(E=5, H=4, W=6, R=2, seed=3)
    dispatched = []
    real_op = triton_ops._cross_op
    monkeypatch.setattr(triton_ops, "_cross_op", lambda *a: dispatched.append(1) or real_op(*a))
    with torch.no_grad():
        direct = triton_ops.cross_selective_scan(*args)
    assert not dispatched
    results = []
    for mode, through_op in ((contextlib.nullcontext(), False), (FlopCounterMode(display=False), True)):
        dispatched.clear()
        leaves = [t.clone().requires_grad_(True) for t in args]
        with mode:
            y = triton_ops.cross_selective_scan(*leaves)
            y.backward(dout)
        results.append((y.detach(), [t.grad for t in leaves]))
        assert bool(dispatched) == through_op
        assert ("_CrossScanFn" in type(y.grad_fn).__name__) != through_op
    # equal up to the order of the directions' fp32 atomic adds, which a GPU does not fix from run to run
    torch.testing.assert_close(direct, results[0][0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(results[0], results[1], rtol=1e-6, atol=1e-6)


@requires_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("name, kwargs", [
    ("vmamba_tiny_s1l8", dict(depths=[1, 1, 2, 1])),
    ("vanilla_vmamba_tiny", dict(depths=[1, 1, 2, 1])),
    ("vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2", dict(depth=2, img_size=64)),
    ("msvmamba_nano", {}),
], ids=["vmamba_v2", "vmamba_v0", "vim", "msvmamba"])
def test_training_step_does_not_synchronize_the_gpu(name, kwargs):
    """A forward + backward under fp16 autocast queues its work without waiting for the GPU: a stream sync inside
    the model (a blocking copy, an .item()) would serialise the host with the GPU in every training step."""
    model = vssm.create_model(name, num_classes=10, **kwargs).cuda().train()
    x = torch.randn(2, 3, 64, 64, device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.float16):
            loss = model(x).float().logsumexp(-1).mean()
        loss.backward()

    step()  # first launches compile the Triton kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
