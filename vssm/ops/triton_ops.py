"""Launchers of the Triton scan kernels (vssm/ops/triton_scan.py) and the fused SS2D custom op.

- :func:`selective_scan_triton_fwd` / :func:`selective_scan_triton_bwd`: the plain geometry; the ``triton``
  implementation behind ``torch.ops.vssm.selective_scan`` (selective_scan.py).
- ``torch.ops.vssm.cross_selective_scan``: the SS2D core fused with the cross-scan, the dt projection, softplus,
  the D skip and the cross-merge (:func:`cross_selective_scan`), with a fake implementation and autograd so
  ``torch.compile`` sees one opaque op.

The backward needs the state at the start of each of its chunks. Under autograd the fused op's forward writes them
(at d_state 1 they are 1/4 of u's fp32 bytes: :data:`KEEP_STATES`) and the backward reads them; otherwise the
backward recomputes them with a forward pass of the kernel (the plain geometry always does). The kernels also run
on CPU tensors under ``TRITON_INTERPRET=1``, which is how CI tests them. Launches go through
:func:`triton_launch.launch`, which skips Triton's per-call argument binding once a kernel is known.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

try:
    import triton

    from . import triton_scan as kernels
    from .triton_launch import launch

    HAS_TRITON = True
except ImportError:  # a CPU-only install without triton: the torch backend serves everything
    HAS_TRITON = False

__all__ = [
    "HAS_TRITON",
    "triton_usable",
    "cross_selective_scan",
    "selective_scan_triton_fwd",
    "selective_scan_triton_bwd",
]

_ORDERS = {"unidi": 0, "cross2d": 1, "bidi": 2}
# {(N == 1, backward): launch config}; measured on an H100 with benchmarks/gpu_check.py --sweep
# CPP: chunks per program in the forward (a sequence longer than that is split into runs scanned in parallel)
CONFIGS = {
    (True, False): dict(BLOCK_L=64, BLOCK_D=32, NUM_STAGES=2, num_warps=2, CPP=1 << 30),
    (True, True): dict(BLOCK_L=16, BLOCK_D=32, NUM_STAGES=1, num_warps=1),
    (False, False): dict(BLOCK_L=32, BLOCK_D=16, NUM_STAGES=2, num_warps=4, CPP=1 << 30),
    (False, True): dict(BLOCK_L=32, BLOCK_D=16, NUM_STAGES=2, num_warps=4),
}
# the plain geometry at N=1 (tiles loaded position-contiguous: triton_scan._over_states):
# {(backward, 16-bit input): launch config}; H100, benchmarks/scan_bandwidth_gpu.py --sweep
FLAT_CONFIGS = {
    (False, False): dict(BLOCK_L=64, BLOCK_D=16, NUM_STAGES=2, num_warps=2, CPP=1 << 30),
    (False, True): dict(BLOCK_L=64, BLOCK_D=8, NUM_STAGES=2, num_warps=4, CPP=1 << 30),
    (True, False): dict(BLOCK_L=64, BLOCK_D=4, NUM_STAGES=1, num_warps=1),
    (True, True): dict(BLOCK_L=64, BLOCK_D=4, NUM_STAGES=1, num_warps=1),
}
# The fused SS2D forward computes the dt projection (dt_low @ W_dt^T, rank R) inside the kernel for small ranks; from
# this rank on it runs as one batched GEMM before it (R broadcast loads and FMAs per element cost more than writing
# and reading z; H100, benchmarks/scan_stages_gpu.py: in-kernel faster at R = 6 and 12, the GEMM at 24 and 48).
# The backward returns dL/dz to two GEMMs (d(dt_low), dW; in-kernel reductions instead: 1.2-2.6x slower per stage)
# and projects dt_low in-kernel like the forward below BWD_DT_GEMM_MIN_RANK (else it reads z from a GEMM).
DT_GEMM_MIN_RANK = 16
BWD_DT_GEMM_MIN_RANK = DT_GEMM_MIN_RANK
# The fused backward writes dL/dz (Δ's pre-activation) in u's dtype when that is 16-bit (autocast training) and runs
# the GEMMs for d(dt_low) and dW on it in that dtype (fp32 accumulation, like autocast's own backward GEMMs): half
# the bytes of the largest tensor the backward writes, and tensor cores instead of fp32 GEMMs of rank R on the CUDA
# cores. benchmarks/eager_ab_gpu.py variant fp32_dz turns it off.
HALF_DZ = True
# Under autograd the fused forward keeps the chunk-start states for the backward when d_state is 1 (the states are
# then a quarter of u's fp32 bytes; at d_state 16 they would be twice u's and the backward recomputes them).
# benchmarks/eager_ab_gpu.py variant recompute_states turns it off.
KEEP_STATES = True
Strides = Tuple[int, int, int, int, int]  # (batch, group k, channel/state, h, w)
MAX_LENGTH = 1 << 20  # triton_scan._divmod is exact below this many positions


def triton_usable(t: Tensor) -> bool:
    """Whether the Triton kernels can run on this tensor's device (CUDA, or anything under TRITON_INTERPRET=1)."""
    return HAS_TRITON and (t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


@dataclass
class _Scan:
    """The operands of one kernel launch: tensors with their (b, k, c, h, w) strides, and the geometry."""

    u: Tensor
    su: Strides
    dl: Tensor  # delta or Δ's pre-activation z (R == 0), or dt_low (R > 0: the forward kernel projects it)
    sdl: Strides
    Bm: Tensor
    sb: Strides
    Cm: Tensor
    sc: Strides
    w: Optional[Tensor]  # dt projection (K, E, R) when R > 0
    bias: Optional[Tensor]  # (K*E,) fp32
    A: Tensor  # (K*E, N) fp32
    D: Optional[Tensor]  # (K*E,) fp32
    batch: int
    E: int
    H: int
    W: int
    K: int
    N: int
    R: int
    order: int
    merge: bool
    softplus: bool

    def __post_init__(self) -> None:
        if self.H * self.W >= MAX_LENGTH:
            raise ValueError(
                f"the Triton scan handles sequences of fewer than {MAX_LENGTH} positions (its pixel index math is "
                f"exact up to there), got {self.H} x {self.W} = {self.H * self.W}; use backend='torch' for this input"
            )

    def config(self, backward: bool = False) -> dict:
        """Tile sizes and launch options."""
        return _config(self.E, self.H * self.W, self.N, self.flat, self.u.element_size() < 4, backward)

    @property
    def flat(self) -> bool:
        """One row scanned forward (the plain geometry): triton_scan._pixels' FLAT path."""
        return self.order == 0 and self.H == 1

    def grid(self, block_d: int, runs: int = 1) -> Tuple[int, int, int]:
        return self.batch * triton.cdiv(self.E, block_d), self.K, runs

    def common(self):
        # pointers of absent operands are never read (HAS_* flags); any tensor fills the slot
        fill = self.A
        return (
            self.u, self.dl, self.w if self.w is not None else fill, self.bias if self.bias is not None else fill,
            self.A, self.D if self.D is not None else fill, self.Bm, self.Cm,
        )

    def flags(self):
        return dict(K=self.K, N=self.N, ORDER=self.order, FLAT=self.flat, MERGE=self.merge,
                    SOFTPLUS=self.softplus, HAS_D=self.D is not None, HAS_BIAS=self.bias is not None,
                    FAST_MATH=self.u.is_cuda)


def _config(E: int, length: int, N: int, flat: bool, half: bool, backward: bool) -> dict:
    """Tile sizes and launch options of a scan of ``length`` positions over E channels (half: 16-bit input)."""
    if flat and N == 1:
        cfg = dict(FLAT_CONFIGS[backward, half])
    else:
        cfg = dict(CONFIGS[N == 1, backward])
    cfg["BLOCK_D"] = min(cfg["BLOCK_D"], max(16, triton.next_power_of_2(E)))
    cfg["BLOCK_N"] = triton.next_power_of_2(N)
    cfg["EVEN_D"] = E % cfg["BLOCK_D"] == 0
    cfg["EVEN_L"] = length % cfg["BLOCK_L"] == 0
    if backward:
        cfg.pop("CPP", None)
    return cfg


def _kept_states(u: Tensor, K: int, N: int, order: str) -> Optional[Tuple[Tuple[int, ...], int]]:
    """(shape (B, K, backward chunks, N, E), positions per backward chunk) of the chunk-start states the fused
    forward keeps for the backward, or None where it keeps none (KEEP_STATES off, d_state > 1, or chunks that do not
    nest)."""
    batch, E, H, W = u.shape
    flat, half = order == "unidi" and H == 1, u.element_size() < 4
    if not KEEP_STATES or N != 1:
        return None
    every = _config(E, H * W, N, flat, half, backward=True)["BLOCK_L"]
    if _config(E, H * W, N, flat, half, backward=False)["BLOCK_L"] % every:
        return None
    return (batch, K, triton.cdiv(H * W, every), N, E), every


def _run_starts(op: _Scan, cfg: dict, chunks_per_run: int) -> Tuple[Tensor, int]:
    """Start state (batch, K, runs, N, E) of every run of ``chunks_per_run`` chunks: the runs are scanned from zero in
    parallel (their log-decay and end state kept), then chained by a short sequential pass."""
    length = op.H * op.W
    n_chunks = triton.cdiv(length, cfg["BLOCK_L"])
    runs = triton.cdiv(n_chunks, chunks_per_run)
    shape = (op.batch, op.K, runs, op.N, op.E)
    f32 = dict(device=op.u.device, dtype=torch.float32)
    log_decay, end, states = torch.empty(shape, **f32), torch.empty(shape, **f32), torch.empty(shape, **f32)
    launch(kernels._scan_fwd_kernel, op.grid(cfg["BLOCK_D"], runs),
           *op.common(), op.A, op.A, log_decay, end, op.A, op.E, op.H, op.W, length, n_chunks, op.R, chunks_per_run,
           runs, 1, *op.su, *op.sdl, *op.sb, *op.sc, 0, 0, 0, 0, 0,
           **op.flags(), DT_PROJ=op.R > 0, LOAD_STATE=False, SUMMARY=True, STORE_Y=False, STORE_STATES=False,
           STATE_EVERY=1, **cfg)
    launch(kernels._run_starts_kernel, op.grid(cfg["BLOCK_D"])[:2],
           log_decay, end, states, op.E, runs, K=op.K, N=op.N, BLOCK_D=cfg["BLOCK_D"], BLOCK_N=cfg["BLOCK_N"])
    return states, runs


def _forward(op: _Scan, y: Tensor, sy: Strides, kept_states: Optional[Tensor] = None, state_every: int = 1) -> None:
    """Run the forward kernel into y (zero-filled fp32 when merging: the directions add into it), and into
    kept_states (B, K, backward chunks, N, E) the state at the start of each backward chunk of state_every
    positions."""
    cfg = op.config()
    chunks_per_run = cfg.pop("CPP")
    length = op.H * op.W
    n_chunks = triton.cdiv(length, cfg["BLOCK_L"])
    if chunks_per_run >= n_chunks:
        states, runs = op.A, 1
    else:
        states, runs = _run_starts(op, cfg, chunks_per_run)
    keep = kept_states is not None
    launch(kernels._scan_fwd_kernel, op.grid(cfg["BLOCK_D"], runs),
           *op.common(), y, states, op.A, op.A, kept_states if keep else op.A, op.E, op.H, op.W, length, n_chunks,
           op.R, chunks_per_run, runs, kept_states.shape[2] if keep else 1, *op.su, *op.sdl, *op.sb, *op.sc, *sy,
           **op.flags(), DT_PROJ=op.R > 0, LOAD_STATE=runs > 1, SUMMARY=False, STORE_Y=True, STORE_STATES=keep,
           STATE_EVERY=state_every, **cfg)


def _backward(op: _Scan, dy: Tensor, sdy: Strides, du: Tensor, sdu: Strides, dz: Tensor, sdz: Strides,
              dB: Tensor, sdb: Strides, dC: Tensor, sdc: Strides,
              states: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """Run the backward kernel into du / dz (dL/d of Δ's pre-activation) / dB / dC (dB, dC and du when merging are
    accumulated with atomic adds: zero-filled fp32); returns (dA, dD, dbias) fp32. ``states``: the start state of
    every chunk as the forward kept it (recomputed when None)."""
    cfg = op.config(backward=True)
    length = op.H * op.W
    if states is None or states.shape[2] != triton.cdiv(length, cfg["BLOCK_L"]):  # none kept, or other chunks
        states, _ = _run_starts(op, cfg, 1)
    f32 = dict(device=op.u.device, dtype=torch.float32)
    dA = torch.zeros((op.K * op.E, op.N), **f32)
    dD = torch.zeros((op.K * op.E,), **f32)
    dbias = torch.zeros((op.K * op.E,), **f32)
    u, dl, w, bias, A, D, Bm, Cm = op.common()
    launch(kernels._scan_bwd_kernel, op.grid(cfg["BLOCK_D"]),
           u, dl, w, bias, A, D, Bm, Cm, dy, states, du, dz, dbias, dA, dD, dB, dC,
           op.E, op.H, op.W, length, triton.cdiv(length, cfg["BLOCK_L"]), op.R,
           *op.su, *op.sdl, *op.sb, *op.sc, *sdy, *sdu, *sdz, *sdb, *sdc,
           **op.flags(), DT_PROJ=op.R > 0, **cfg)
    return dA, dD, dbias


# ---------------------------------------------------------------------------------------------------------------
# plain geometry: (batch, K*D, L) sequences


def _plain(t: Tensor, group_size: int) -> Strides:
    """(b, k, c, h, w) strides of a (batch, K*D, L) tensor seen as K groups on a 1 x L image."""
    sb, sc, sl = t.stride()
    return sb, group_size * sc, sc, 0, sl


def _plain_bc(t: Tensor) -> Strides:
    sb, sk, sn, sl = t.stride()
    return sb, sk, sn, 0, sl


def _opt_f32(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.float().contiguous()


def _plain_scan(u, delta, A, B, C, D, delta_bias, softplus) -> _Scan:
    batch, channels, length = u.shape
    groups = B.shape[1]
    E = channels // groups
    return _Scan(
        u=u, su=_plain(u, E), dl=delta, sdl=_plain(delta, E), Bm=B, sb=_plain_bc(B), Cm=C, sc=_plain_bc(C),
        w=None, bias=_opt_f32(delta_bias), A=A.float().contiguous(), D=_opt_f32(D),
        batch=batch, E=E, H=1, W=length, K=groups, N=A.shape[1], R=0, order=0, merge=False, softplus=softplus,
    )


def selective_scan_triton_fwd(u, delta, A, B, C, D, delta_bias, delta_softplus: bool, out_dtype) -> Tensor:
    """Plain selective scan with the Triton kernel (selective_scan's layout; B, C 4-D)."""
    op = _plain_scan(u, delta, A, B, C, D, delta_bias, delta_softplus)
    y = torch.empty(u.shape, device=u.device, dtype=out_dtype or u.dtype)
    _forward(op, y, _plain(y, op.E))
    return y


def selective_scan_triton_bwd(dout, u, delta, A, B, C, D, delta_bias, delta_softplus: bool):
    """Gradients (du, ddelta, dA, dB, dC, dD, ddelta_bias) of the plain scan with the Triton kernel."""
    op = _plain_scan(u, delta, A, B, C, D, delta_bias, delta_softplus)
    dout = dout.contiguous()
    du = torch.empty(u.shape, device=u.device, dtype=torch.float32)
    ddelta = torch.empty(delta.shape, device=u.device, dtype=torch.float32)
    dB = torch.zeros(B.shape, device=u.device, dtype=torch.float32)
    dC = torch.zeros(C.shape, device=u.device, dtype=torch.float32)
    dA, dD, dbias = _backward(op, dout, _plain(dout, op.E), du, _plain(du, op.E), ddelta, _plain(ddelta, op.E),
                              dB, _plain_bc(dB), dC, _plain_bc(dC))
    return (
        du.to(u.dtype), ddelta.to(delta.dtype), dA.to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
        dD.to(D.dtype if D is not None else torch.float32),
        dbias.to(delta_bias.dtype if delta_bias is not None else torch.float32),
    )


# ---------------------------------------------------------------------------------------------------------------
# cross geometry: the fused SS2D core


def _map(t: Tensor) -> Strides:
    """(b, k=0, c, h, w) strides of a (B, C, H, W) map shared by all directions."""
    sb, sc, sh, sw = t.stride()
    return sb, 0, sc, sh, sw


def _dt_low(x_dbl: Tensor, K: int, R: int, N: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Direction k's dt_low rows of x_dbl (B, K*(R+2N), H, W) as (K, B*H*W, R) in dtype."""
    batch, _, height, width = x_dbl.shape
    low = x_dbl.unflatten(1, (K, R + 2 * N))[:, :, :R]
    return low.permute(1, 0, 3, 4, 2).reshape(K, batch * height * width, R).to(dtype)


def _cross_scan_op(u, x_dbl, dt_weight, dt_bias, A, D, order: str, dt_gemm: bool) -> Tuple[_Scan, Optional[Tensor]]:
    """The launch operands, and dt_low (K, B*H*W, R) when the dt projection runs as a GEMM (dt_gemm): the kernels
    then read its result, Δ's pre-activation without the bias, z (K, B, H, W, E) fp32."""
    batch, E, H, W = u.shape
    K, E_w, R = dt_weight.shape
    N = A.shape[1]
    per_k = R + 2 * N
    sb, sc, sh, sw = x_dbl.stride()
    # x_dbl (B, K*(R+2N), H, W): direction k's [dt_low | B | C] rows; offsets into the same storage
    dl_strides = (sb, per_k * sc, sc, sh, sw)
    dl, sdl, low, w = x_dbl, dl_strides, None, dt_weight.contiguous()
    if dt_gemm:
        low = _dt_low(x_dbl, K, R, N)
        with torch.autocast(u.device.type, enabled=False):  # fp32 like the in-kernel projection
            dl = torch.bmm(low, dt_weight.float().transpose(1, 2))  # (K, B*H*W, E)
        sdl, w, R = (H * W * E, batch * H * W * E, 1, W * E, E), None, 0
    op = _Scan(
        u=u, su=_map(u), dl=dl, sdl=sdl, Bm=x_dbl[:, per_k - 2 * N:], sb=dl_strides, Cm=x_dbl[:, per_k - N:],
        sc=dl_strides, w=w, bias=dt_bias.float().contiguous().view(-1), A=A.float().contiguous(),
        D=D.float().contiguous(), batch=batch, E=E, H=H, W=W, K=K, N=N, R=R, order=_ORDERS[order], merge=True,
        softplus=True,
    )
    return op, low


def in_traced_context(*tensors: Optional[Tensor]) -> bool:
    """Whether a call is being traced rather than run: under torch.compile, under a dispatch mode (FLOP counting,
    fake tensors), or on meta / fake tensors. Such calls must go through registered ops."""
    return (
        torch.compiler.is_compiling()
        or _get_current_dispatch_mode() is not None
        or any(t is not None and (t.is_meta or isinstance(t, FakeTensor)) for t in tensors)
    )


def _cross_forward(u: Tensor, x_dbl: Tensor, dt_weight: Tensor, dt_bias: Tensor, A: Tensor, D: Tensor,
                   order: str, keep_states: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
    """The merged output (B, E, H, W) fp32 and, with keep_states where the kernels keep them
    (:func:`_kept_states`), the chunk-start states for the backward."""
    op, _ = _cross_scan_op(u, x_dbl, dt_weight, dt_bias, A, D, order, dt_gemm=dt_weight.shape[2] >= DT_GEMM_MIN_RANK)
    y = torch.zeros_like(u, dtype=torch.float32)  # keeps u's memory format; the 4 directions add into it
    kept = _kept_states(u, op.K, op.N, order) if keep_states else None
    if kept is None:
        _forward(op, y, _map(y))
        return y, None
    states = torch.empty(kept[0], device=u.device, dtype=torch.float32)
    _forward(op, y, _map(y), states, kept[1])
    return y, states


def _no_states(u: Tensor) -> Tensor:
    return u.new_empty((0,), dtype=torch.float32)


@torch.library.custom_op("vssm::cross_selective_scan", mutates_args=())
def _cross_op(u: Tensor, x_dbl: Tensor, dt_weight: Tensor, dt_bias: Tensor, A: Tensor, D: Tensor, order: str,
              keep_states: bool) -> Tuple[Tensor, Tensor]:
    y, states = _cross_forward(u, x_dbl, dt_weight, dt_bias, A, D, order, keep_states)
    return y, _no_states(u) if states is None else states


@_cross_op.register_fake
def _(u, x_dbl, dt_weight, dt_bias, A, D, order, keep_states):
    kept = _kept_states(u, dt_weight.shape[0], A.shape[1], order) if keep_states else None
    states = _no_states(u) if kept is None else u.new_empty(kept[0], dtype=torch.float32)
    return torch.empty_like(u, dtype=torch.float32), states


def _cross_backward(dy: Tensor, u: Tensor, x_dbl: Tensor, dt_weight: Tensor, dt_bias: Tensor, A: Tensor, D: Tensor,
                    states: Optional[Tensor], order: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients (u, x_dbl, dt_weight, dt_bias, A, D) of the fused op; ``states`` as its forward kept them (None:
    recomputed here)."""
    K, E, R = dt_weight.shape
    batch, _, height, width = u.shape
    op, low = _cross_scan_op(u, x_dbl, dt_weight, dt_bias, A, D, order, dt_gemm=R >= BWD_DT_GEMM_MIN_RANK)
    half = HALF_DZ and u.dtype in (torch.float16, torch.bfloat16)
    grad_dtype = u.dtype if half else torch.float32
    if low is None:  # the kernels project dt_low themselves; dW's GEMM still needs it, in its own dtype
        low = _dt_low(x_dbl, K, R, op.N, grad_dtype)
    du = torch.zeros_like(u, dtype=torch.float32)
    d_x_dbl = torch.zeros_like(x_dbl, dtype=torch.float32)
    sb, sc, sh, sw = d_x_dbl.stride()
    per_k = R + 2 * op.N
    sd = (sb, per_k * sc, sc, sh, sw)
    pixels = batch * height * width
    dz = torch.empty((K, pixels, E), device=u.device, dtype=grad_dtype)
    sdz = (height * width * E, pixels * E, 1, width * E, E)
    dA, dD, dbias = _backward(op, dy, _map(dy), du, _map(du), dz, sdz, d_x_dbl[:, R:], sd, d_x_dbl[:, R + op.N:], sd,
                              states)
    with torch.autocast(u.device.type, enabled=False):
        d_low = torch.bmm(dz, dt_weight.to(grad_dtype))  # (K, B*H*W, R)
        # one GEMM per (k, image), then summed: one reduction over all B*H*W rows leaves cuBLAS too few output
        # tiles (measured 30x slower at stage-1 shapes)
        dW = torch.bmm(dz.view(K * batch, height * width, E).transpose(1, 2),
                       low.reshape(K * batch, -1, R).to(grad_dtype))
        dW = dW.view(K, batch, E, R).sum(1, dtype=torch.float32)
    d_low = d_low.view(K, batch, height, width, R).permute(1, 0, 4, 2, 3)  # (B, K, R, H, W)
    d_x_dbl.unflatten(1, (K, per_k))[:, :, :R].copy_(d_low)
    return (du.to(u.dtype), d_x_dbl.to(x_dbl.dtype), dW.to(dt_weight.dtype), dbias.view(dt_bias.shape).to(dt_bias.dtype),
            dA.to(A.dtype), dD.to(D.dtype))


@torch.library.custom_op("vssm::cross_selective_scan_backward", mutates_args=())
def _cross_backward_op(
    dy: Tensor, u: Tensor, x_dbl: Tensor, dt_weight: Tensor, dt_bias: Tensor, A: Tensor, D: Tensor, states: Tensor,
    order: str,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """:func:`_cross_backward` as a custom op (traced graphs); empty ``states``: recomputed."""
    return _cross_backward(dy, u, x_dbl, dt_weight, dt_bias, A, D, states if states.numel() else None, order)


@_cross_backward_op.register_fake
def _(dy, u, x_dbl, dt_weight, dt_bias, A, D, states, order):
    return tuple(torch.empty_like(t) for t in (u, x_dbl, dt_weight, dt_bias, A, D))


def _cross_setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs[:6], output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.order = inputs[6]


def _needed(grads: Tuple[Tensor, ...], needs_input_grad: Tuple[bool, ...]) -> Tuple[Optional[Tensor], ...]:
    return tuple(g if need else None for g, need in zip(grads, needs_input_grad))


def _cross_autograd_backward(ctx, dy, _d_states):
    grads = _cross_backward_op(dy.contiguous(memory_format=_memory_format(dy)), *ctx.saved_tensors, ctx.order)
    return _needed(grads, ctx.needs_input_grad) + (None, None)


_cross_op.register_autograd(_cross_autograd_backward, setup_context=_cross_setup_context)


class _CrossScanFn(torch.autograd.Function):
    """The fused op under eager autograd, without the custom op's dispatch (~0.2 ms of host per forward +
    backward through torch.library's Python layers, which made eager training host-bound: see
    benchmarks/results/gpu-2026-11-22.md, Update 8); traced graphs use the custom op."""

    @staticmethod
    def forward(ctx, u: Tensor, x_dbl: Tensor, dt_weight: Tensor, dt_bias: Tensor, A: Tensor, D: Tensor,
                order: str) -> Tensor:
        y, states = _cross_forward(u, x_dbl, dt_weight, dt_bias, A, D, order, keep_states=True)
        ctx.save_for_backward(u, x_dbl, dt_weight, dt_bias, A, D, states)
        ctx.order = order
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        grads = _cross_backward(dy.contiguous(memory_format=_memory_format(dy)), *ctx.saved_tensors, ctx.order)
        return _needed(grads, ctx.needs_input_grad) + (None,)


def _memory_format(t: Tensor) -> torch.memory_format:
    return torch.channels_last if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


def cross_selective_scan(u: Tensor, x_dbl: Tensor, dt_weight: Tensor, dt_bias: Tensor, A: Tensor, D: Tensor,
                         order: str = "cross2d") -> Tensor:
    """The fused SS2D core: returns the merged scan output (B, E, H, W) in fp32 (u's memory format).

    Args:
        u: (B, E, H, W) input of the scan (after the depthwise conv and act), any strides; channels_last memory is
            the fast layout (every direction's loads are then contiguous in E).
        x_dbl: (B, K*(R+2N), H, W) per-pixel projections [dt_low | B | C] of each direction k (x_proj applied in
            the pixel domain: it commutes with the scan order).
        dt_weight: (K, E, R); dt_bias: (K, E); A: (K*E, N) (negative); D: (K*E,).
        order: "cross2d" (SS2D), "bidi" or "unidi".
    """
    if order not in _ORDERS:
        raise ValueError(f"cross_selective_scan: order must be one of {sorted(_ORDERS)}, got {order!r}")
    # traced calls go through the custom op; eager ones launch the kernels directly (with gradients through an
    # autograd.Function): the op's dispatch costs host time, and eager steps at these sizes are bound by the host
    inputs = (u, x_dbl, dt_weight, dt_bias, A, D)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    if in_traced_context(*inputs):
        return _cross_op(*inputs, order, grad)[0]
    if grad:
        return _CrossScanFn.apply(*inputs, order)
    return _cross_forward(*inputs, order)[0]
