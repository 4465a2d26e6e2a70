"""Selective scan (S6), the recurrence at the heart of every model in vssm.

Layout (the official VMamba / mamba "oflex" layout):

    u, delta      (batch, K*D, L)    K groups of D channels, sequence length L
    A             (K*D, N)           N = d_state
    B, C          (batch, K, N, L)   shared by the D channels of a group (or (batch, N, L) for K = 1)
    D, delta_bias (K*D,)

    dt_t = softplus(delta_t + delta_bias)             (if delta_softplus)
    h_t  = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t   h_{-1} = 0, h in R^N per channel
    y_t  = sum_n C_t[n] * h_t[n] + D * u_t

State and accumulation are float32 (float64 if an input is float64) whatever the input dtype.

Backends (one public function, ``backend=``):

- ``reference``: the sequential definition, a Python loop over L, differentiated by autograd. Slow on purpose;
  the ground truth every other backend is tested against.
- ``torch``: a vectorised work-efficient associative scan (pairwise reduction, log2(L) levels, no division by
  cumulative products) with a hand-written backward that recomputes the forward and runs the adjoint
  recurrence in reverse, in chunks of channels so memory stays bounded. Any device.
- ``cpu``: forward and backward as fused numba loops (vssm/ops/numba_scan.py), fp32 state, CPU only; ``auto``
  picks it on CPU when numba is installed and no input is float64.
- further backends (the fused Triton kernel) register themselves with :func:`register_backend`.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .cpu_ops import cpu_kernel_usable, selective_scan_cpu_bwd, selective_scan_cpu_fwd
from .triton_ops import selective_scan_triton_bwd, selective_scan_triton_fwd, triton_usable

__all__ = [
    "selective_scan",
    "selective_scan_reference",
    "selective_scan_torch",
    "selective_scan_triton",
    "selective_scan_cpu",
    "register_backend",
    "available_backends",
    "linear_scan",
]

# Elements of one (rows, D, N, L) temporary; the torch backend processes channels in blocks of this size. On the
# CPU, blocks that stay below the allocator's mmap threshold and in cache are several times faster than big ones.
_BLOCK_ELEMENTS = {"cpu": 1 << 20}
_BLOCK_ELEMENTS_DEFAULT = 1 << 25
_SOFTPLUS_THRESHOLD = 20.0  # torch's softplus (and the official CUDA kernel) return x unchanged above this

ScanFn = Callable[..., Tensor]
_BACKENDS: Dict[str, ScanFn] = {}
_AUTO_PREDICATES: Dict[str, Callable[..., bool]] = {}


def register_backend(name: str, fn: ScanFn, use_for_auto: Optional[Callable[..., bool]] = None) -> None:
    """Register a selective-scan backend.

    ``fn`` takes ``(u, delta, A, B, C, D, delta_bias, delta_softplus, out_dtype)`` with validated arguments and
    B, C always 4-D. ``use_for_auto(u, delta, A, B, C, D, delta_bias)`` says whether ``backend="auto"`` should
    pick it for these inputs; backends registered later take precedence.
    """
    _BACKENDS[name] = fn
    if use_for_auto is not None:
        _AUTO_PREDICATES[name] = use_for_auto


def available_backends() -> Tuple[str, ...]:
    return tuple(_BACKENDS)


# ----------------------------------------------------------------------------------------------------------------
# argument checking


def _check_args(u, delta, A, B, C, D, delta_bias) -> None:
    def need_tensor(name: str, t) -> None:
        if not isinstance(t, Tensor):
            raise ValueError(f"selective_scan: `{name}` must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(
                f"selective_scan: `{name}` must be a floating-point tensor (float32, bfloat16, float16 or "
                f"float64), got {t.dtype}; convert it with .float()"
            )

    for name, t in (("u", u), ("delta", delta), ("A", A), ("B", B), ("C", C)):
        need_tensor(name, t)
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None:
            need_tensor(name, t)

    if u.dim() != 3:
        raise ValueError(
            f"selective_scan: `u` must have shape (batch, K*D, L), got {u.dim()} dims {tuple(u.shape)}"
        )
    batch, channels, length = u.shape
    if tuple(delta.shape) != tuple(u.shape):
        raise ValueError(
            f"selective_scan: `delta` must have the shape of `u` (batch, K*D, L) = {tuple(u.shape)}, "
            f"got {tuple(delta.shape)}"
        )
    if A.dim() != 2 or A.shape[0] != channels:
        raise ValueError(
            f"selective_scan: `A` must have shape (K*D, N) = ({channels}, N), got {tuple(A.shape)}"
        )
    n_state = A.shape[1]
    if B.dim() == 3:
        expected = (batch, n_state, length)
        groups = 1
    elif B.dim() == 4:
        groups = B.shape[1]
        expected = (batch, groups, n_state, length)
    else:
        raise ValueError(
            f"selective_scan: `B` must have shape (batch, K, N, L) = ({batch}, K, {n_state}, {length}) "
            f"or (batch, N, L), got {tuple(B.shape)}"
        )
    if groups == 0 or channels % groups != 0:
        raise ValueError(
            f"selective_scan: `u` has K*D = {channels} channels, which is not divisible by the K = {groups} "
            f"groups of `B` {tuple(B.shape)}; K*D must be a multiple of K"
        )
    if tuple(B.shape) != expected:
        form = "(batch, K, N, L)" if B.dim() == 4 else "(batch, N, L)"
        raise ValueError(f"selective_scan: `B` must have shape {form} = {expected}, got {tuple(B.shape)}")
    if tuple(C.shape) != expected:
        raise ValueError(f"selective_scan: `C` must have shape {expected} (the shape of `B`), got {tuple(C.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (channels,):
            raise ValueError(f"selective_scan: `{name}` must have shape (K*D,) = ({channels},), got {tuple(t.shape)}")
    devices = {t.device for t in (u, delta, A, B, C, D, delta_bias) if t is not None}
    if len(devices) > 1:
        raise ValueError(f"selective_scan: all tensors must be on one device, got {sorted(map(str, devices))}")


def _compute_dtype(*tensors: Optional[Tensor]) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


# ----------------------------------------------------------------------------------------------------------------
# reference backend


def selective_scan_reference(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = True,
    out_dtype: Optional[torch.dtype] = None,
) -> Tensor:
    """The sequential definition (a loop over L); B and C are 4-D. Differentiable through autograd."""
    dtype = _compute_dtype(u, delta, A, B, C, D, delta_bias)
    batch, channels, length = u.shape
    group_size = channels // B.shape[1]
    u_, dt = u.to(dtype), delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    b_ch = B.to(dtype).repeat_interleave(group_size, dim=1)  # (batch, channels, N, L)
    c_ch = C.to(dtype).repeat_interleave(group_size, dim=1)
    a = A.to(dtype)
    h = u_.new_zeros(batch, channels, A.shape[1])
    ys = []
    for t in range(length):
        h = torch.exp(dt[:, :, t, None] * a) * h + (dt[:, :, t] * u_[:, :, t])[..., None] * b_ch[..., t]
        ys.append((h * c_ch[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.to(dtype)[:, None] * u_
    return y.to(out_dtype or u.dtype)


# ----------------------------------------------------------------------------------------------------------------
# torch backend


def linear_scan(a: Tensor, b: Tensor) -> Tensor:
    """h_t = a_t * h_{t-1} + b_t along the last dim, h_{-1} = 0, for tensors of equal shape.

    Work-efficient pairwise reduction: adjacent pairs are composed, (a0, b0) then (a1, b1) = (a0*a1, a1*b0 + b1),
    the half-length problem is solved recursively for the odd positions and the even positions are filled from
    their left neighbour. Only products of decays are formed, never divisions, so it is stable for any decay.
    """
    h = b.clone()
    _linear_scan_(a, h)
    return h


def _linear_scan_(a: Tensor, h: Tensor, a_is_scratch: bool = False) -> None:
    """:func:`linear_scan` in place: ``h`` holds b on entry and the states on return. ``a`` is left as it was
    unless ``a_is_scratch`` (then its odd positions are overwritten). Fresh large tensors cost page faults on CPU
    (several times the arithmetic), so every level works in the two buffers plus one half-length product."""
    length = h.shape[-1]
    if length == 1:
        return
    end = 2 * (length // 2)
    a_even, a_odd = a[..., 0:end:2], a[..., 1:end:2]
    h_odd = h[..., 1:end:2]
    h_odd.addcmul_(a_odd, h[..., 0:end:2])  # (a_odd, b_odd + a_odd * b_even): each pair composed
    pair_decay = a_odd.mul_(a_even) if a_is_scratch else a_odd * a_even
    _linear_scan_(pair_decay, h_odd, a_is_scratch=True)  # states at the odd positions
    h[..., 2::2].addcmul_(a[..., 2::2], h[..., 1 : length - 1 : 2])  # even positions from their left neighbour


def _reverse_linear_scan(a: Tensor, c: Tensor) -> Tensor:
    """g_t = a_{t+1} * g_{t+1} + c_t, g_L = 0: the adjoint of :func:`linear_scan`."""
    a_next = torch.cat([a[..., 1:], torch.ones_like(a[..., :1])], dim=-1).flip(-1)
    g = c.flip(-1)
    _linear_scan_(a_next, g, a_is_scratch=True)
    return g.flip(-1)


def _states(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, bias: Tensor, softplus: bool):
    """Per block: u, delta (r, d, L); A (r, d, N); B (r, N, L); bias (r, d).

    Returns the pre-activation z = delta + bias, dt, the decays a = exp(dt*A) and the states h, (r, d, N, L).
    """
    z = delta + bias[..., None]
    dt = F.softplus(z) if softplus else z
    a = (dt[:, :, None, :] * A[..., None]).exp_()
    h = (dt * u)[:, :, None, :] * B[:, None]
    _linear_scan_(a, h)
    return z, dt, a, h


def _blocks(rows: int, channels: int, n_state: int, length: int, device: torch.device, scale: float = 1.0):
    """Yield (row slice, channel slice) blocks whose (rows, channels, N, L) temporaries stay within the budget."""
    budget = int(_BLOCK_ELEMENTS.get(device.type, _BLOCK_ELEMENTS_DEFAULT) * scale)
    per_channel = max(1, n_state * length)
    ch_block = min(channels, max(1, budget // per_channel))
    row_block = max(1, budget // (per_channel * ch_block))
    for r0 in range(0, rows, row_block):
        for c0 in range(0, channels, ch_block):
            yield slice(r0, min(rows, r0 + row_block)), slice(c0, min(channels, c0 + ch_block))


class _GroupedInputs:
    """Views of the scan arguments with (batch, K) flattened to rows: u (rows, D, L), B (rows, N, L), A (rows, D, N)."""

    def __init__(self, u, delta, A, B, C, D, delta_bias, dtype):
        batch, channels, length = u.shape
        groups, n_state = B.shape[1], B.shape[2]
        self.group_size = channels // groups
        self.shape = (batch, groups, self.group_size, n_state, length)
        rows = batch * groups
        self.u = u.reshape(rows, self.group_size, length)
        self.delta = delta.reshape(rows, self.group_size, length)
        self.B = B.reshape(rows, n_state, length)
        self.C = C.reshape(rows, n_state, length)

        def per_row(t: Optional[Tensor], trailing: Tuple[int, ...]) -> Tensor:
            if t is None:
                return u.new_zeros((rows, self.group_size) + trailing, dtype=dtype)
            t = t.to(dtype).reshape((groups, self.group_size) + trailing)
            return t.expand((batch,) + t.shape).reshape((rows, self.group_size) + trailing)

        self.A = per_row(A, (n_state,))
        self.D = per_row(D, ())
        self.bias = per_row(delta_bias, ())
        self.dtype = dtype

    def block(self, rows: slice, chans: slice):
        dt = self.dtype
        return (
            self.u[rows, chans].to(dt),
            self.delta[rows, chans].to(dt),
            self.A[rows, chans],
            self.B[rows].to(dt),
            self.C[rows].to(dt),
            self.D[rows, chans],
            self.bias[rows, chans],
        )


def _torch_forward(args: _GroupedInputs, softplus: bool, out_dtype: torch.dtype) -> Tensor:
    batch, groups, group_size, n_state, length = args.shape
    out = args.u.new_empty((batch * groups, group_size, length), dtype=out_dtype)
    for rows, chans in _blocks(batch * groups, group_size, n_state, length, args.u.device):
        u, delta, A, B, C, D, bias = args.block(rows, chans)
        _, _, _, h = _states(u, delta, A, B, bias, softplus)
        y = h[:, :, 0].mul_(C) if n_state == 1 else torch.einsum("rdnl,rnl->rdl", h, C)
        out[rows, chans] = y.addcmul_(D[..., None], u)
    return out.view(batch, groups * group_size, length)


@torch.library.custom_op("vssm::selective_scan", mutates_args=())
def _scan_op(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor],
    delta_bias: Optional[Tensor],
    delta_softplus: bool,
    out_dtype: Optional[torch.dtype],
    impl: str,
) -> Tensor:
    if impl == "triton":
        return selective_scan_triton_fwd(u, delta, A, B, C, D, delta_bias, delta_softplus, out_dtype)
    if impl == "cpu":
        return selective_scan_cpu_fwd(u, delta, A, B, C, D, delta_bias, delta_softplus, out_dtype)
    dtype = _compute_dtype(u, delta, A, B, C, D, delta_bias)
    args = _GroupedInputs(u, delta, A, B, C, D, delta_bias, dtype)
    return _torch_forward(args, delta_softplus, out_dtype or u.dtype)


@_scan_op.register_fake
def _(u, delta, A, B, C, D, delta_bias, delta_softplus, out_dtype, impl):
    return u.new_empty(u.shape, dtype=out_dtype or u.dtype)


@torch.library.custom_op("vssm::selective_scan_backward", mutates_args=())
def _scan_backward_op(
    dout: Tensor,
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor],
    delta_bias: Optional[Tensor],
    delta_softplus: bool,
    impl: str,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients (du, ddelta, dA, dB, dC, dD, ddelta_bias); dD / ddelta_bias are zeros when D / delta_bias are None."""
    if impl == "triton":
        return selective_scan_triton_bwd(dout, u, delta, A, B, C, D, delta_bias, delta_softplus)
    if impl == "cpu":
        return selective_scan_cpu_bwd(dout, u, delta, A, B, C, D, delta_bias, delta_softplus)
    dtype = _compute_dtype(u, delta, A, B, C, D, delta_bias)
    args = _GroupedInputs(u, delta, A, B, C, D, delta_bias, dtype)
    batch, groups, group_size, n_state, length = args.shape
    rows_total = batch * groups
    dout = dout.reshape(rows_total, group_size, length)

    du = torch.empty_like(args.u, dtype=dtype)
    ddelta = torch.empty_like(args.delta, dtype=dtype)
    dA = u.new_zeros((rows_total, group_size, n_state), dtype=dtype)
    dB = u.new_zeros((rows_total, n_state, length), dtype=dtype)
    dC = u.new_zeros((rows_total, n_state, length), dtype=dtype)
    dD = u.new_zeros((rows_total, group_size), dtype=dtype)
    dbias = u.new_zeros((rows_total, group_size), dtype=dtype)

    # The backward holds about twice the forward's temporaries: use half-size blocks.
    for rows, chans in _blocks(rows_total, group_size, n_state, length, u.device, scale=0.5):
        u_b, delta_b, A_b, B_b, C_b, D_b, bias_b = args.block(rows, chans)
        z, dt, a, h = _states(u_b, delta_b, A_b, B_b, bias_b, delta_softplus)
        g_out = dout[rows, chans].to(dtype)
        # adjoint state: g_t = dL/dh_t = a_{t+1} g_{t+1} + C_t * dy_t
        g = _reverse_linear_scan(a, C_b[:, None] * g_out[:, :, None, :])
        h_prev = F.pad(h[..., :-1], (1, 0))
        d_log_a = g * h_prev * a  # dL/d(dt*A)
        g_b = torch.einsum("rdnl,rnl->rdl", g, B_b)  # sum_n g * B
        d_dt = torch.einsum("rdnl,rdn->rdl", d_log_a, A_b) + g_b * u_b
        du[rows, chans] = torch.addcmul(g_b * dt, D_b[..., None], g_out)
        dA[rows, chans] = torch.einsum("rdnl,rdl->rdn", d_log_a, dt)
        dB[rows] += torch.einsum("rdnl,rdl->rnl", g, dt * u_b)
        dC[rows] += torch.einsum("rdnl,rdl->rnl", h, g_out)
        dD[rows, chans] = (g_out * u_b).sum(-1)
        if delta_softplus:
            d_dt = torch.where(z > _SOFTPLUS_THRESHOLD, d_dt, d_dt * torch.sigmoid(z))
        ddelta[rows, chans] = d_dt
        dbias[rows, chans] = d_dt.sum(-1)

    def per_channel(t: Tensor) -> Tensor:  # (rows, D, ...) summed over batch -> (K*D, ...)
        return t.view((batch, groups * group_size) + t.shape[2:]).sum(0)

    return (
        du.view(u.shape).to(u.dtype),
        ddelta.view(delta.shape).to(delta.dtype),
        per_channel(dA).to(A.dtype),
        dB.view(B.shape).to(B.dtype),
        dC.view(C.shape).to(C.dtype),
        per_channel(dD).to(D.dtype if D is not None else dtype),
        per_channel(dbias).to(delta_bias.dtype if delta_bias is not None else dtype),
    )


@_scan_backward_op.register_fake
def _(dout, u, delta, A, B, C, D, delta_bias, delta_softplus, impl):
    channels = u.shape[1]
    like = lambda t: torch.empty_like(t) if t is not None else u.new_empty((channels,), dtype=torch.float32)  # noqa: E731
    return tuple(like(t) for t in (u, delta, A, B, C)) + (like(D), like(delta_bias))


def _scan_setup_context(ctx, inputs, output) -> None:
    u, delta, A, B, C, D, delta_bias, delta_softplus, _, impl = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, delta_bias)
    ctx.delta_softplus = delta_softplus
    ctx.impl = impl


def _scan_autograd_backward(ctx, dout):
    u, delta, A, B, C, D, delta_bias = ctx.saved_tensors
    grads = list(_scan_backward_op(dout.contiguous(), u, delta, A, B, C, D, delta_bias, ctx.delta_softplus, ctx.impl))
    grads[5] = grads[5] if D is not None else None
    grads[6] = grads[6] if delta_bias is not None else None
    return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad)) + (None, None, None)


_scan_op.register_autograd(_scan_autograd_backward, setup_context=_scan_setup_context)


def selective_scan_torch(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, out_dtype=None) -> Tensor:
    """The portable backend (the custom op ``torch.ops.vssm.selective_scan``): vectorised associative scan with a
    recomputing backward; B and C are 4-D."""
    return _scan_op(u, delta, A, B, C, D, delta_bias, delta_softplus, out_dtype, "torch")


def selective_scan_triton(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, out_dtype=None) -> Tensor:
    """The GPU backend: the same custom op with the Triton kernels (vssm/ops/triton_scan.py)."""
    if not triton_usable(u):
        raise ValueError("selective_scan: backend 'triton' needs CUDA tensors and the triton package "
                         "(or TRITON_INTERPRET=1 for the CPU interpreter); use backend='torch' here")
    return _scan_op(u, delta, A, B, C, D, delta_bias, delta_softplus, out_dtype, "triton")


def selective_scan_cpu(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=True, out_dtype=None) -> Tensor:
    """The CPU backend: the same custom op with the numba kernels (vssm/ops/numba_scan.py)."""
    if not cpu_kernel_usable(u, delta, A, B, C, D, delta_bias):
        raise ValueError("selective_scan: backend 'cpu' needs CPU tensors of float32, bfloat16 or float16 and the "
                         "numba package (pip install numba; unset VSSM_DISABLE_NUMBA); use backend='torch' here")
    return _scan_op(u, delta, A, B, C, D, delta_bias, delta_softplus, out_dtype, "cpu")


register_backend("reference", selective_scan_reference)
register_backend("torch", selective_scan_torch, use_for_auto=lambda *tensors: True)
register_backend("cpu", selective_scan_cpu, use_for_auto=cpu_kernel_usable)
register_backend("triton", selective_scan_triton, use_for_auto=lambda u, *rest: u.is_cuda and triton_usable(u))


# ----------------------------------------------------------------------------------------------------------------
# public entry point


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Optional[Tensor] = None,
    delta_bias: Optional[Tensor] = None,
    delta_softplus: bool = True,
    out_dtype: Optional[torch.dtype] = None,
    backend: str = "auto",
) -> Tensor:
    """Selective scan with the official VMamba layout; returns y (batch, K*D, L).

    Args:
        u, delta: (batch, K*D, L).
        A: (K*D, N), real; negative for a decaying state.
        B, C: (batch, K, N, L), shared by the D channels of each of the K groups; (batch, N, L) means K = 1.
        D: (K*D,) skip weight, or None.
        delta_bias: (K*D,) added to delta before the softplus, or None.
        delta_softplus: apply softplus (threshold 20, like torch and the official kernel) to delta + bias.
        out_dtype: dtype of y; None keeps u's dtype (pass torch.float32 for the official "oflex" behaviour).
        backend: "auto" (the fastest registered backend for the input's device: "triton" on CUDA, "cpu" on CPU with
            numba and no float64 input, else "torch"), "torch", "cpu", "reference", or any
            registered name (see :func:`available_backends`).
    """
    _check_args(u, delta, A, B, C, D, delta_bias)
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    if backend == "auto":
        tensors = (u, delta, A, B, C, D, delta_bias)
        backend = next(name for name in reversed(list(_AUTO_PREDICATES)) if _AUTO_PREDICATES[name](*tensors))
    elif backend not in _BACKENDS:
        raise ValueError(f"selective_scan: unknown backend {backend!r}; available: {', '.join(_BACKENDS)} or 'auto'")
    return _BACKENDS[backend](u, delta, A, B, C, D, delta_bias, delta_softplus, out_dtype)
