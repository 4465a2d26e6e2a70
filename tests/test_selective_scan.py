"""The selective scan: every CPU backend against the official golden cases, the torch and cpu (numba) backends
against the sequential reference on fresh random inputs (fp32 tight, bf16 / fp16 loose), the cpu kernel's exp /
softplus against float64, its output buffers, plus argument errors."""
import importlib
import importlib.util

import pytest
import torch

from conftest import load_fixture
from vssm.ops import linear_scan, selective_scan

NAMES = ("u", "delta", "A", "B", "C", "D", "delta_bias")


def scan_cases():
    meta, tensors = load_fixture("scan_cases")
    return [(case, {k: tensors[f"{case['name']}/{k}"] for k in list(NAMES) + ["out", "dout"] + [f"grad_{n}" for n in NAMES]}) for case in meta["cases"]]


CASES = scan_cases()


def run_with_grads(inputs, dout, softplus, backend, **kw):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in inputs.items()}
    out = selective_scan(*(leaves[k] for k in NAMES), delta_softplus=softplus, backend=backend, **kw)
    out.backward(dout.to(out.dtype))
    return out.detach(), {k: v.grad for k, v in leaves.items()}


def rel_err(ours, ref):
    return ((ours.double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-6)).item()


HAS_NUMBA = importlib.util.find_spec("numba") is not None
needs_numba = pytest.mark.skipif(not HAS_NUMBA, reason="the cpu backend needs numba (a dependency of vssm)")
FAST_BACKENDS = ["torch", "cpu"] if HAS_NUMBA else ["torch"]


@pytest.mark.parametrize("backend", ["torch", pytest.param("cpu", marks=needs_numba), "reference"])
@pytest.mark.parametrize("case", CASES, ids=[c[0]["name"] for c in CASES])
def test_official_scan_cases(case, backend):
    meta, t = case
    out, grads = run_with_grads({k: t[k] for k in NAMES}, t["dout"], meta["delta_softplus"], backend)
    assert rel_err(out, t["out"]) <= 1e-4
    for name in NAMES:
        ref = t[f"grad_{name}"]
        assert (grads[name] - ref).abs().max() <= 1e-4 * max(ref.abs().max().item(), 1e-6), name


def random_inputs(batch, k, d, n, length, dtype=torch.float32, softplus=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    ch = k * d
    A = -torch.exp(0.5 * torch.randn(ch, n, generator=g) + torch.log(torch.arange(1, n + 1.0)))
    delta = 0.5 * torch.randn(batch, ch, length, generator=g) if softplus else torch.rand(batch, ch, length, generator=g) * 0.5
    inputs = dict(
        u=torch.randn(batch, ch, length, generator=g),
        delta=delta,
        A=A,
        B=torch.randn(batch, k, n, length, generator=g),
        C=torch.randn(batch, k, n, length, generator=g),
        D=torch.randn(ch, generator=g),
        delta_bias=torch.rand(ch, generator=g) * 2.5 - 2.0,
    )
    inputs = {k_: (v.to(dtype) if k_ in ("u", "delta", "B", "C") else v) for k_, v in inputs.items()}
    return inputs, torch.randn(batch, ch, length, generator=g)


SHAPES = [  # (batch, K, D, N, L): N=1 hot path and N=16, K=1/2/4, L from 1 to thousands incl. non-powers of two and
    # exact multiples of the cpu kernel's chunk
    (2, 4, 8, 1, 1),
    (1, 1, 5, 16, 2),
    (2, 2, 3, 16, 33),
    (2, 4, 6, 1, 129),
    (1, 2, 4, 16, 257),
    (1, 2, 3, 1, 512),
    (2, 4, 3, 1, 1000),
    (1, 1, 4, 1, 3001),
    (1, 4, 2, 16, 1537),
]


@pytest.mark.parametrize("backend", ["torch", pytest.param("cpu", marks=needs_numba)])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "b{}k{}d{}n{}l{}".format(*s))
def test_backend_matches_reference_fp32(shape, backend):
    inputs, dout = random_inputs(*shape, seed=sum(shape))
    ref_out, ref_grads = run_with_grads({k: v.double() for k, v in inputs.items()}, dout.double(), True, "reference")
    out, grads = run_with_grads(inputs, dout, True, backend)
    assert out.dtype == torch.float32
    assert rel_err(out, ref_out) < 2e-5
    for name in NAMES:
        assert rel_err(grads[name], ref_grads[name]) < 5e-5, name
        assert grads[name].dtype == inputs[name].dtype


def test_torch_backend_float64_is_exact():
    inputs, dout = random_inputs(2, 2, 3, 4, 50, softplus=False, seed=7)
    inputs = {k: v.double() for k, v in inputs.items()}
    out, grads = run_with_grads(inputs, dout.double(), False, "torch")
    ref_out, ref_grads = run_with_grads(inputs, dout.double(), False, "reference")
    assert out.dtype == torch.float64
    assert rel_err(out, ref_out) < 1e-12
    for name in NAMES:
        assert rel_err(grads[name], ref_grads[name]) < 1e-11, name


@pytest.mark.parametrize("backend", ["torch", pytest.param("cpu", marks=needs_numba)])
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float16, 3e-3)])
@pytest.mark.parametrize("n_state", [1, 16])
def test_half_precision_inputs_accumulate_in_fp32(dtype, tol, n_state, backend):
    """bf16 / fp16 u, delta, B, C: the only error allowed is the rounding of the inputs themselves, because the
    state and the accumulation are fp32 (compared with the fp64 reference on the same rounded inputs, and the
    rounded-input error is bounded by the stated tolerance against the fp32-input result)."""
    inputs, dout = random_inputs(2, 4, 6, n_state, 300, dtype=dtype, seed=3)
    out, grads = run_with_grads(inputs, dout, True, backend, out_dtype=torch.float32)
    ref_out, ref_grads = run_with_grads({k: v.double() for k, v in inputs.items()}, dout.double(), True, "reference")
    assert out.dtype == torch.float32
    assert rel_err(out, ref_out) < 1e-5  # fp32 state: exact up to fp32 rounding on the same inputs
    for name in ("A", "D", "delta_bias"):
        assert rel_err(grads[name], ref_grads[name]) < 1e-4, name
    for name in ("u", "delta", "B", "C"):
        assert grads[name].dtype == dtype
        assert rel_err(grads[name], ref_grads[name]) < tol, name
    # and the loose comparison with full-precision inputs
    full, _ = random_inputs(2, 4, 6, n_state, 300, seed=3)
    full_out = selective_scan(*(full[k] for k in NAMES), backend=backend)
    assert rel_err(out, full_out) < 5 * tol
    out_default = selective_scan(*(inputs[k] for k in NAMES), backend=backend)
    assert out_default.dtype == dtype  # out_dtype=None keeps u's dtype


@pytest.mark.parametrize("backend", ["torch", pytest.param("cpu", marks=needs_numba)])
@pytest.mark.parametrize("n_state", [1, 16])
def test_large_delta_decay_underflow_is_stable(backend, n_state):
    inputs, dout = random_inputs(1, 2, 4, n_state, 200, seed=11)
    inputs["delta"] = 20 + 2 * torch.randn_like(inputs["delta"])  # exp(dt*A) underflows to 0
    out, grads = run_with_grads(inputs, dout, True, backend)
    ref_out, ref_grads = run_with_grads({k: v.double() for k, v in inputs.items()}, dout.double(), True, "reference")
    assert torch.isfinite(out).all()
    assert rel_err(out, ref_out) < 1e-5
    for name in NAMES:
        assert torch.isfinite(grads[name]).all()
        assert rel_err(grads[name], ref_grads[name]) < 1e-4, name


def test_optional_arguments_and_three_dim_b():
    inputs, _ = random_inputs(2, 1, 4, 3, 20, seed=5)
    B3, C3 = inputs["B"][:, 0], inputs["C"][:, 0]
    for backend in FAST_BACKENDS + ["reference"]:
        y3 = selective_scan(inputs["u"], inputs["delta"], inputs["A"], B3, C3, backend=backend)
        y4 = selective_scan(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], None, None, backend=backend)
        torch.testing.assert_close(y3, y4)
    ref = selective_scan(inputs["u"], inputs["delta"], inputs["A"], B3, C3, delta_softplus=False, backend="reference")
    for backend in FAST_BACKENDS:
        y = selective_scan(inputs["u"], inputs["delta"], inputs["A"], B3, C3, delta_softplus=False, backend=backend)
        torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


def test_chunking_over_channels_matches(monkeypatch):
    """Tiny blocks force the channel / row chunking paths; results must not change."""
    module = importlib.import_module("vssm.ops.selective_scan")

    inputs, dout = random_inputs(3, 2, 5, 4, 40, seed=9)
    out, grads = run_with_grads(inputs, dout, True, "torch")
    monkeypatch.setitem(module._BLOCK_ELEMENTS, "cpu", 64)
    out_small, grads_small = run_with_grads(inputs, dout, True, "torch")
    torch.testing.assert_close(out, out_small)
    for name in NAMES:
        torch.testing.assert_close(grads[name], grads_small[name])


def test_linear_scan_matches_loop():
    a, b = torch.rand(3, 77), torch.randn(3, 77)
    h, expected = torch.zeros(3), []
    for t in range(77):
        h = a[:, t] * h + b[:, t]
        expected.append(h)
    torch.testing.assert_close(linear_scan(a, b), torch.stack(expected, -1))


@pytest.mark.parametrize("impl", ["torch", pytest.param("cpu", marks=needs_numba)])
def test_custom_op_registration(impl):
    inputs, _ = random_inputs(2, 2, 3, 1, 9, seed=1)
    args = tuple(inputs[k].requires_grad_() for k in NAMES) + (True, None, impl)
    torch.library.opcheck(torch.ops.vssm.selective_scan.default, args)


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(u=torch.randn(2, 8)), "`u` must have shape (batch, K*D, L)"),
        (dict(delta=torch.randn(2, 8, 5)), "`delta` must have the shape of `u`"),
        (dict(A=torch.randn(7, 1)), "`A` must have shape (K*D, N) = (8, N)"),
        (dict(B=torch.randn(2, 3, 1, 6), C=torch.randn(2, 3, 1, 6)), "not divisible by the K = 3 groups"),
        (dict(B=torch.randn(2, 4, 2, 6)), "`B` must have shape (batch, K, N, L) = (2, 4, 1, 6)"),
        (dict(C=torch.randn(2, 4, 1, 5)), "`C` must have shape (2, 4, 1, 6)"),
        (dict(D=torch.randn(4)), "`D` must have shape (K*D,) = (8,)"),
        (dict(delta_bias=torch.randn(8, 1)), "`delta_bias` must have shape (K*D,) = (8,)"),
        (dict(u=torch.ones(2, 8, 6, dtype=torch.long)), "`u` must be a floating-point tensor"),
        (dict(B=torch.randn(2, 4, 1)), "`B` must have shape (batch, N, L) = (2, 1, 6)"),
    ],
)
def test_bad_arguments_raise_value_error(change, message):
    args = dict(
        u=torch.randn(2, 8, 6), delta=torch.randn(2, 8, 6), A=-torch.rand(8, 1), B=torch.randn(2, 4, 1, 6),
        C=torch.randn(2, 4, 1, 6), D=torch.randn(8), delta_bias=torch.randn(8),
    )
    args.update(change)
    with pytest.raises(ValueError) as err:
        selective_scan(**args)
    assert message in str(err.value)


def test_unknown_backend():
    inputs, _ = random_inputs(1, 1, 2, 1, 3)
    with pytest.raises(ValueError, match="unknown backend 'cuda-magic'"):
        selective_scan(*(inputs[k] for k in NAMES), backend="cuda-magic")


# ----------------------------------------------------------------------------------------------------------------
# the cpu backend's kernel (vssm/ops/numba_scan.py) and its wrapper


@needs_numba
def test_auto_picks_cpu_kernel_unless_float64(monkeypatch):
    module = importlib.import_module("vssm.ops.selective_scan")
    calls = []
    for name in ("cpu", "torch"):
        monkeypatch.setitem(module._BACKENDS, name, lambda *a, _n=name, _f=module._BACKENDS[name]: calls.append(_n) or _f(*a))
    inputs, _ = random_inputs(1, 2, 3, 1, 10)
    selective_scan(*(inputs[k] for k in NAMES))
    selective_scan(*(inputs[k].double() if k == "A" else inputs[k] for k in NAMES))  # float64 anywhere -> torch
    assert calls == ["cpu", "torch"]


@needs_numba
def test_cpu_backend_without_numba_raises_clear_error(monkeypatch):
    cpu_ops = importlib.import_module("vssm.ops.cpu_ops")
    monkeypatch.setenv("VSSM_DISABLE_NUMBA", "1")
    cpu_ops._kernels.cache_clear()
    try:
        inputs, _ = random_inputs(1, 2, 3, 1, 10)
        with pytest.raises(ValueError, match="backend 'cpu' needs CPU tensors .* numba"):
            selective_scan(*(inputs[k] for k in NAMES), backend="cpu")
        auto = selective_scan(*(inputs[k] for k in NAMES))  # auto falls back to the torch backend
        torch.testing.assert_close(auto, selective_scan(*(inputs[k] for k in NAMES), backend="reference"))
    finally:
        monkeypatch.delenv("VSSM_DISABLE_NUMBA")
        cpu_ops._kernels.cache_clear()


@needs_numba
def test_cpu_kernel_exp_and_softplus_against_float64():
    """The polynomial exp / softplus that make the kernel's loop vectorise, over their whole float32 range."""
    import numpy as np

    kernels = importlib.import_module("vssm.ops.numba_scan")
    exp_f32 = kernels.numba.njit(lambda x: np.array([kernels.exp_f32(v) for v in x], np.float32))
    softplus_f32 = kernels.numba.njit(lambda x: np.array([kernels.softplus_f32(v) for v in x], np.float32))
    x = torch.cat([torch.linspace(-86.5, 88.7, 200001), torch.randn(10000) * 3]).numpy()
    ref = torch.from_numpy(x).double()
    got = torch.from_numpy(exp_f32(x)).double()
    assert ((got - ref.exp()) / ref.exp()).abs().max() < 4e-7  # a few float32 ulps
    z = torch.cat([torch.linspace(-100, 100, 200001), torch.randn(10000) * 3]).numpy()
    ref_sp = torch.nn.functional.softplus(torch.from_numpy(z).double())
    got_sp = torch.from_numpy(softplus_f32(z)).double()
    normal = ref_sp > 2.0**-125
    assert ((got_sp - ref_sp)[normal] / ref_sp[normal]).abs().max() < 4e-7
    assert (got_sp - ref_sp)[~normal].abs().max() < 2.0**-124  # the bottom of float32's range may flush to zero
    edge = np.array([-np.inf, -1000.0, 89.0, np.inf, np.nan], np.float32)
    assert exp_f32(edge)[:4].tolist() == [0.0, 0.0, np.inf, np.inf] and np.isnan(exp_f32(edge)[4])
    assert softplus_f32(edge)[:4].tolist() == [0.0, 0.0, 89.0, np.inf] and np.isnan(softplus_f32(edge)[4])


def force_cpu_kernel(monkeypatch, kernel):
    """Route the cpu backend to one of its kernels: "rows" (vectorised along positions) or "groups" (across
    channels), whichever ``across_channels`` would pick."""
    kernels = importlib.import_module("vssm.ops.numba_scan")
    monkeypatch.setattr(kernels, "across_channels", lambda length, n_state, group_size: kernel == "groups")


@needs_numba
@pytest.mark.parametrize("kernel", ["rows", "groups"])
@pytest.mark.parametrize("shape", [(2, 4, 6, 1, 4), (2, 4, 5, 1, 16), (1, 2, 7, 16, 49), (2, 2, 3, 1, 300),
                                   (1, 2, 9, 16, 700)], ids=lambda s: "b{}k{}d{}n{}l{}".format(*s))
def test_cpu_kernels_both_layouts_match_reference(shape, kernel, monkeypatch):
    """Each kernel at every shape, with and without softplus. The groups kernel keeps a chunk of at most 2^15 states
    per group, so 700 positions of 16 x 9 states run as four chunks, the last one of 19 positions."""
    force_cpu_kernel(monkeypatch, kernel)
    for softplus in (True, False):
        inputs, dout = random_inputs(*shape, softplus=softplus, seed=sum(shape) + softplus)
        inputs["delta_bias"] = inputs["delta_bias"].abs()  # without softplus a negative dt makes the states blow up
        ref_out, ref_grads = run_with_grads({k: v.double() for k, v in inputs.items()}, dout.double(), softplus,
                                            "reference")
        out, grads = run_with_grads(inputs, dout, softplus, "cpu")
        assert rel_err(out, ref_out) < 2e-5
        for name in NAMES:
            assert rel_err(grads[name], ref_grads[name]) < 5e-5, (name, softplus)


@needs_numba
@pytest.mark.parametrize("kernel", ["rows", "groups"])
def test_cpu_kernel_propagates_nan(kernel, monkeypatch):
    force_cpu_kernel(monkeypatch, kernel)
    inputs, _ = random_inputs(1, 2, 3, 1, 30)
    for name in ("u", "delta", "A", "B"):
        bad = {k: v.clone() for k, v in inputs.items()}
        bad[name].view(-1)[0] = float("nan")
        y = selective_scan(*(bad[k] for k in NAMES), backend="cpu")
        assert y[0, 0].isnan().any(), name  # the channel that saw the NaN


@needs_numba
def test_cpu_outputs_reuse_freed_buffers_only():
    inputs, _ = random_inputs(2, 4, 6, 1, 100)
    args = [inputs[k] for k in NAMES]
    first = selective_scan(*args, backend="cpu")
    second = selective_scan(*args, backend="cpu")
    assert first.data_ptr() != second.data_ptr()  # both alive: distinct memory
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    expected, ptr = first.clone(), first.data_ptr()
    del first
    third = selective_scan(*args, backend="cpu")
    assert third.data_ptr() == ptr  # the freed output was the next one's buffer
    torch.testing.assert_close(third, expected, rtol=0, atol=0)
