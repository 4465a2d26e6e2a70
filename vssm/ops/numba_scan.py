"""numba kernels of the selective scan on CPU (wrappers: vssm/ops/cpu_ops.py). numba is a pip wheel that bundles
LLVM, so this still needs no compiler on the user's machine; it is imported only when a CPU scan runs.

Why a kernel: in eager PyTorch every elementwise step of the scan is its own pass over memory and softplus / exp
dominate (on a 2-core VM, per million fp32 elements: softplus 1.8 ms, exp 0.5 ms, a multiply 0.1 ms), so the
portable backend cannot go below ~6 ms at VMamba-T stage-1 shapes (benchmarks/results/scan-cpu-2026-11-22.md).
Here long rows are processed in chunks of positions that stay in L1: a vectorised pass computes dt = softplus(z)
and the decay exp(dt*A) with a polynomial exp and log1p that LLVM turns into SIMD code (libm's expf / log1pf are
scalar calls that block vectorisation), then a scalar pass runs the recurrence h_t = a_t h_{t-1} + dt_t u_t B_t.
The backward recomputes the chunk's states from the state entering it and runs the adjoint the same way.
The group kernels vectorise across channels instead: all channels of a group (they share B and C) step through
the positions together, on a position-major copy of a chunk of the group's rows. They serve short rows, where the
loops' set-up along positions costs more than their work (the last stages of a small model: L = 16 or 4), and
every row with more than one state (d_state 16 of VMamba v0 and Vim), whose recurrence the row kernels run
scalar (`across_channels`; measured in benchmarks/results/scan-layout-cpu-2026-11-23.md).

Accuracy: exp (degree-7 polynomial after a two-part ln 2 reduction) and softplus are within a few fp32 ulps over
the whole range (tested against float64); results below 2^-125 flush to zero like denormals under FTZ. State and
accumulation are fp32; inputs of any float dtype are converted to fp32 first, float64 is not handled here (the
torch backend computes it in float64).
"""
from __future__ import annotations

import functools

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

_CHUNK = 256  # positions per vectorised pass: the chunk's scratch rows stay in L1
_ROWS = 4  # channels scanned together: independent recurrences hide the FMA latency
SHORT_GROUP = 20_000  # positions x channels of a group up to which the group kernels serve N = 1 (across_channels)
_GROUP_STATES = 1 << 15  # floats of state per chunk in the group kernels (128 KiB: the chunk's working set stays in L2)

f32 = np.float32
_LOG2E, _LN2_HI, _LN2_LO = f32(1.4426950408889634), f32(0.693359375), f32(-2.12194440e-4)
# Only FMA contraction: reassociation would undo the two-part ln2 reduction, and NaN must stay NaN.
_jit = functools.partial(numba.njit, fastmath={"contract"}, error_model="numpy", cache=True)


@intrinsic
def bits_to_f32(typingctx, bits):
    """Reinterpret an int32 as float32 (builds 2^n for exp; a bitcast, so the loop still vectorises)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@_jit(inline="always")
def exp_f32(x):
    """exp for float32 in arithmetic only (vectorisable): 2^n * p(f) with x = n ln2 + f, |f| <= ln2 / 2.

    Results below 2^-125 (x < -86.6) flush to 0 like denormals under FTZ; 2^n is built as 2^(n-1) * 2 so that
    x up to 88.72 (n = 128) stays finite; larger x gives inf, NaN stays NaN."""
    xc = min(max(x, f32(-87.5)), f32(88.75))
    n = np.floor(xc * _LOG2E + f32(0.5))
    f = (xc - n * _LN2_HI) - n * _LN2_LO
    p = f32(1.0 / 5040.0)
    p = p * f + f32(1.0 / 720.0)
    p = p * f + f32(1.0 / 120.0)
    p = p * f + f32(1.0 / 24.0)
    p = p * f + f32(1.0 / 6.0)
    p = p * f + f32(0.5)
    p = p * f + f32(1.0)
    p = p * f + f32(1.0)
    r = p * bits_to_f32((np.int32(n) + np.int32(126)) << np.int32(23)) * f32(2.0)
    return x if x != x else r


@_jit(inline="always")
def softplus_f32(z):
    # softplus(z) = max(z, 0) + log1p(e), e = exp(-|z|) in (0, 1]; log1p(e) = 2 atanh(s), s = e / (2 + e) <= 1/3,
    # so the odd series converges fast and stays exact for tiny e (no 1 + e rounding).
    e = exp_f32(-abs(z))
    s = e / (f32(2.0) + e)
    s2 = s * s
    q = f32(1.0 / 15.0)
    q = q * s2 + f32(1.0 / 13.0)
    q = q * s2 + f32(1.0 / 11.0)
    q = q * s2 + f32(1.0 / 9.0)
    q = q * s2 + f32(1.0 / 7.0)
    q = q * s2 + f32(1.0 / 5.0)
    q = q * s2 + f32(1.0 / 3.0)
    q = q * s2 + f32(1.0)
    return max(z, f32(0.0)) + f32(2.0) * s * q


@_jit(inline="always")
def _discretize(z_r, u_r, bias_c, a_c, B_r, t0, m, softplus, dt, decay, drive):
    """One channel's chunk [t0, t0 + m): dt (m,), decay = exp(dt*A) and drive = dt*u*B as (N * _CHUNK,) rows,
    position-minor (vectorised over positions)."""
    for i in range(m):
        z = z_r[t0 + i] + bias_c
        dt[i] = softplus_f32(z) if softplus else z
    for n in range(a_c.shape[0]):
        a_n = a_c[n]
        for i in range(m):
            decay[n * _CHUNK + i] = exp_f32(dt[i] * a_n)
            drive[n * _CHUNK + i] = dt[i] * u_r[t0 + i] * B_r[n, t0 + i]


@numba.njit(fastmath={"contract", "reassoc"}, error_model="numpy", cache=True)
def _sum(x, m):
    """x[:m].sum() in float32, reassociated so that it vectorises."""
    total = f32(0.0)
    for i in range(m):
        total += x[i]
    return total


@_jit(parallel=True)
def scan_rows(u, delta, A, B, C, D, bias, softplus, y):
    """u, delta, y (batch, K*D, L); A (K*D, N); B, C (batch, K, N, L); D, bias (K*D,); all fp32, contiguous."""
    batch, channels, length = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    group_size = channels // groups
    blocks = (group_size + _ROWS - 1) // _ROWS  # tasks of _ROWS channels of one group share B and C
    for task in numba.prange(batch * groups * blocks):
        b, k, c0 = task // (groups * blocks), task // blocks % groups, task % blocks * _ROWS
        c0 += k * group_size
        rows = min(_ROWS, (k + 1) * group_size - c0)
        B_r, C_r = B[b, k], C[b, k]
        dt = np.empty((_ROWS, _CHUNK), np.float32)
        decay = np.zeros((_ROWS, n_state * _CHUNK), np.float32)  # (row, state * position); missing rows stay 0
        drive = np.zeros((_ROWS, n_state * _CHUNK), np.float32)
        states = np.empty((_ROWS, _CHUNK), np.float32)
        h = np.zeros((_ROWS, n_state), np.float32)
        for t0 in range(0, length, _CHUNK):
            m = min(_CHUNK, length - t0)
            for j in range(rows):
                c = c0 + j
                _discretize(delta[b, c], u[b, c], bias[c], A[c], B_r, t0, m, softplus, dt[j], decay[j], drive[j])
            if n_state == 1:
                # The recurrence is latency-bound: _ROWS independent chains side by side (the j loop unrolls).
                for i in range(m):
                    for j in range(_ROWS):
                        h[j, 0] = decay[j, i] * h[j, 0] + drive[j, i]
                        states[j, i] = h[j, 0]
                for j in range(rows):
                    c = c0 + j
                    u_r, y_r, C_0, d_c = u[b, c, t0:], y[b, c, t0:], C_r[0, t0:], D[c]
                    for i in range(m):
                        y_r[i] = states[j, i] * C_0[i] + d_c * u_r[i]
                continue
            for j in range(rows):
                c = c0 + j
                for i in range(m):
                    acc = D[c] * u[b, c, t0 + i]
                    for n in range(n_state):
                        h[j, n] = decay[j, n * _CHUNK + i] * h[j, n] + drive[j, n * _CHUNK + i]
                        acc += h[j, n] * C_r[n, t0 + i]
                    y[b, c, t0 + i] = acc


@_jit(parallel=True)
def scan_rows_backward(u, delta, A, B, C, D, bias, softplus, dout, du, ddelta, dA, dB, dC, dD, dbias):
    """Gradients of :func:`scan_rows` given dout (batch, K*D, L). Writes du, ddelta (batch, K*D, L), dB, dC
    (batch, K, N, L) and per image dA (batch, K*D, N), dD, dbias (batch, K*D) for the caller to sum over the batch.

    One task per (image, group), so the channels that share B and C add into dB, dC without races. Per channel, a
    forward pass keeps the state entering each chunk; then, chunk by chunk from the end, the chunk's states are
    recomputed, the adjoint g_t = a_{t+1} g_{t+1} + C_t dy_t runs backwards and the gradients are formed in a
    vectorised pass."""
    batch, channels, length = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    group_size = channels // groups
    n_chunks = (length + _CHUNK - 1) // _CHUNK
    span = _CHUNK + 1  # states of a chunk with the one before it: h[-1], h[0], ..., h[m-1]
    for task in numba.prange(batch * groups):
        b, k = task // groups, task % groups
        B_r, C_r, dB_r, dC_r = B[b, k], C[b, k], dB[b, k], dC[b, k]
        dB_r[:] = 0.0
        dC_r[:] = 0.0
        dt = np.empty(_CHUNK, np.float32)
        decay = np.empty(n_state * _CHUNK, np.float32)
        drive = np.empty(n_state * _CHUNK, np.float32)
        states = np.empty(n_state * span, np.float32)
        adjoint = np.empty(n_state * _CHUNK, np.float32)
        ddt = np.empty(_CHUNK, np.float32)
        g_dt = np.empty(_CHUNK, np.float32)
        g_decay = np.empty(_CHUNK, np.float32)
        terms = np.empty(_CHUNK, np.float32)
        starts = np.empty((n_chunks, n_state), np.float32)
        h = np.empty(n_state, np.float32)
        g = np.empty(n_state, np.float32)
        a_next = np.empty(n_state, np.float32)
        for c in range(k * group_size, (k + 1) * group_size):
            z_r, u_r, dy_r, du_r, dz_r = delta[b, c], u[b, c], dout[b, c], du[b, c], ddelta[b, c]
            a_c, bias_c, d_c = A[c], bias[c], D[c]
            h[:] = 0.0
            starts[0] = h
            for ci in range(n_chunks - 1):  # the states entering each chunk (the last chunk's states are not needed)
                t0 = ci * _CHUNK
                _discretize(z_r, u_r, bias_c, a_c, B_r, t0, _CHUNK, softplus, dt, decay, drive)
                for n in range(n_state):
                    hn = h[n]
                    for i in range(_CHUNK):
                        hn = decay[n * _CHUNK + i] * hn + drive[n * _CHUNK + i]
                    h[n] = hn
                starts[ci + 1] = h
            g[:] = 0.0
            a_next[:] = 0.0
            d_skip = f32(0.0)
            d_bias = f32(0.0)
            for n in range(n_state):
                dA[b, c, n] = 0.0
            for ci in range(n_chunks - 1, -1, -1):
                t0 = ci * _CHUNK
                m = min(_CHUNK, length - t0)
                _discretize(z_r, u_r, bias_c, a_c, B_r, t0, m, softplus, dt, decay, drive)
                for n in range(n_state):
                    hn = starts[ci, n]
                    states[n * span] = hn
                    for i in range(m):
                        hn = decay[n * _CHUNK + i] * hn + drive[n * _CHUNK + i]
                        states[n * span + i + 1] = hn
                    gn, an = g[n], a_next[n]
                    for i in range(m - 1, -1, -1):
                        gn = an * gn + C_r[n, t0 + i] * dy_r[t0 + i]
                        adjoint[n * _CHUNK + i] = gn
                        an = decay[n * _CHUNK + i]
                    g[n], a_next[n] = gn, an
                for i in range(m):
                    du_r[t0 + i] = d_c * dy_r[t0 + i]
                    ddt[i] = 0.0
                    terms[i] = dy_r[t0 + i] * u_r[t0 + i]
                d_skip += _sum(terms, m)
                # Loops that write one or two arrays each: with more, LLVM's alias checks give up on vectorising.
                for n in range(n_state):
                    a_n, g_n, h_n = a_c[n], adjoint[n * _CHUNK :], states[n * span :]
                    dB_n, dC_n, B_n = dB_r[n, t0:], dC_r[n, t0:], B_r[n, t0:]
                    for i in range(m):
                        g_dt[i] = g_n[i] * dt[i]
                        g_decay[i] = g_n[i] * h_n[i] * decay[n * _CHUNK + i]  # dL/d(dt*A)
                    for i in range(m):
                        dC_n[i] += h_n[i + 1] * dy_r[t0 + i]
                    for i in range(m):
                        dB_n[i] += g_dt[i] * u_r[t0 + i]
                    for i in range(m):
                        du_r[t0 + i] += g_dt[i] * B_n[i]
                    for i in range(m):
                        ddt[i] += g_decay[i] * a_n + g_n[i] * u_r[t0 + i] * B_n[i]
                    for i in range(m):
                        terms[i] = g_decay[i] * dt[i]
                    dA[b, c, n] += _sum(terms, m)
                if softplus:  # d softplus / dz = sigmoid(z), from e = exp(-|z|) without cancellation
                    for i in range(m):
                        z = z_r[t0 + i] + bias_c
                        e = exp_f32(-abs(z))
                        s = f32(1.0) / (f32(1.0) + e)
                        ddt[i] *= s if z >= f32(0.0) else e * s
                dz_r[t0 : t0 + m] = ddt[:m]
                d_bias += _sum(ddt, m)
            dD[b, c] = d_skip
            dbias[b, c] = d_bias


@_jit(inline="always")
def _group_rows(x, b, c0, t0, out):
    """out (m, group_size) = x[b, c0 : c0 + group_size, t0 : t0 + m].T: a chunk of a group's rows, position-major."""
    for c in range(out.shape[1]):
        for t in range(out.shape[0]):
            out[t, c] = x[b, c0 + c, t0 + t]


@_jit(inline="always")
def _ungroup_rows(rows, b, c0, t0, x):
    """x[b, c0 : c0 + group_size, t0 : t0 + m] = rows.T, for rows (m, group_size)."""
    for c in range(rows.shape[1]):
        for t in range(rows.shape[0]):
            x[b, c0 + c, t0 + t] = rows[t, c]


@_jit(inline="always")
def _group_task(task, groups, group_size, A, D, bias):
    """A group kernel's task: its image b, group k, first channel c0, and the group's D, bias (group_size,) and
    A transposed (N, group_size)."""
    b, k = task // groups, task % groups
    c0 = k * group_size
    A_g = np.ascontiguousarray(A[c0 : c0 + group_size].T)
    return b, k, c0, D[c0 : c0 + group_size], bias[c0 : c0 + group_size], A_g


@_jit(inline="always")
def _group_chunk(length, n_state, group_size):
    """Positions per chunk of the group kernels: a chunk's states (positions x N x group_size) stay in L2."""
    return max(1, min(length, _GROUP_STATES // (n_state * group_size)))


@_jit(inline="always")
def _group_dt(z_t, bias_g, softplus, dt):
    """dt (group_size,) of one position from z_t (group_size,): softplus(z + bias) or z + bias."""
    if softplus:
        for c in range(dt.shape[0]):
            dt[c] = softplus_f32(z_t[c] + bias_g[c])
    else:
        for c in range(dt.shape[0]):
            dt[c] = z_t[c] + bias_g[c]


@_jit(inline="always")
def _group_states(B, b, k, t0, A_g, u_g, z_g, bias_g, softplus, h, dt_g, decay, states):
    """Steps the group's state h (N, group_size) through a chunk of m positions: dt_g (m, group_size) and, when
    ``decay`` / ``states`` are given ((m, N, group_size) / (m + 1, N, group_size)), the decays and the states
    h[t0 - 1], ..., h[t0 + m - 1]."""
    n_state, group_size = h.shape
    keep = states.shape[0] > 0
    if keep:
        states[0] = h
    for t in range(u_g.shape[0]):
        _group_dt(z_g[t], bias_g, softplus, dt_g[t])
        dt, u_t = dt_g[t], u_g[t]
        for n in range(n_state):
            b_tn, a_n, h_n = B[b, k, n, t0 + t], A_g[n], h[n]
            if keep:
                a_tn = decay[t, n]
                for c in range(group_size):
                    a_tn[c] = exp_f32(dt[c] * a_n[c])
                for c in range(group_size):
                    h_n[c] = a_tn[c] * h_n[c] + dt[c] * u_t[c] * b_tn
                states[t + 1, n] = h_n
            else:
                for c in range(group_size):
                    h_n[c] = exp_f32(dt[c] * a_n[c]) * h_n[c] + dt[c] * u_t[c] * b_tn


def across_channels(length: int, n_state: int, group_size: int) -> bool:
    """Whether :func:`scan_groups` serves rows of this length and state size, in groups of this many channels,
    better than :func:`scan_rows`: always with more than one state, else for short rows in not too many channels
    (at N = 1 it is 3-4x faster at L = 4, 1.5x at L = 16, 1.1-1.2x at L = 49 in 48-384 channels, and 0.6-0.9x
    for 49 positions in 768 channels or for 100 in 384)."""
    return n_state > 1 or length <= 32 or length * group_size <= SHORT_GROUP


@numba.njit(fastmath={"contract", "reassoc"}, error_model="numpy", cache=True)
def _dot(x, y):
    """(x * y).sum() in float32, reassociated so that it vectorises."""
    total = f32(0.0)
    for i in range(x.shape[0]):
        total += x[i] * y[i]
    return total


@_jit(parallel=True)
def scan_groups(u, delta, A, B, C, D, bias, softplus, y):
    """:func:`scan_rows` vectorised across channels instead of positions: one task per (image, group), whose
    channels step through the positions together, each step a loop over the group's channels."""
    batch, channels, length = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    group_size = channels // groups
    chunk = _group_chunk(length, n_state, group_size)
    for task in numba.prange(batch * groups):
        b, k, c0, D_g, bias_g, A_g = _group_task(task, groups, group_size, A, D, bias)
        u_g = np.empty((chunk, group_size), np.float32)
        z_g = np.empty((chunk, group_size), np.float32)
        dt_g = np.empty((chunk, group_size), np.float32)
        y_g = np.empty((chunk, group_size), np.float32)
        h = np.zeros((n_state, group_size), np.float32)
        for t0 in range(0, length, chunk):
            m = min(chunk, length - t0)
            _group_rows(u, b, c0, t0, u_g[:m])
            _group_rows(delta, b, c0, t0, z_g[:m])
            for t in range(m):
                _group_dt(z_g[t], bias_g, softplus, dt_g[t])
                dt, u_t, y_t = dt_g[t], u_g[t], y_g[t]
                for c in range(group_size):
                    y_t[c] = D_g[c] * u_t[c]
                for n in range(n_state):
                    b_tn, c_tn, a_n, h_n = B[b, k, n, t0 + t], C[b, k, n, t0 + t], A_g[n], h[n]
                    for c in range(group_size):
                        h_n[c] = exp_f32(dt[c] * a_n[c]) * h_n[c] + dt[c] * u_t[c] * b_tn
                    for c in range(group_size):
                        y_t[c] += h_n[c] * c_tn
            _ungroup_rows(y_g[:m], b, c0, t0, y)


@_jit(parallel=True)
def scan_groups_backward(u, delta, A, B, C, D, bias, softplus, dout, du, ddelta, dA, dB, dC, dD, dbias):
    """:func:`scan_rows_backward` vectorised across the channels of a group like :func:`scan_groups`. A forward
    pass keeps the state entering each chunk of positions; then, chunk by chunk from the end, the chunk's decays
    and states are recomputed and the adjoint g_t = a_{t+1} g_{t+1} + C_t dy_t runs back through it, forming the
    gradients as it goes."""
    batch, channels, length = u.shape
    groups, n_state = B.shape[1], A.shape[1]
    group_size = channels // groups
    chunk = _group_chunk(length, n_state, group_size)
    n_chunks = (length + chunk - 1) // chunk
    no_states = np.empty((0, n_state, group_size), np.float32)
    for task in numba.prange(batch * groups):
        b, k, c0, D_g, bias_g, A_g = _group_task(task, groups, group_size, A, D, bias)
        u_g = np.empty((chunk, group_size), np.float32)
        z_g = np.empty((chunk, group_size), np.float32)
        dy_g = np.empty((chunk, group_size), np.float32)
        dt_g = np.empty((chunk, group_size), np.float32)
        du_g = np.empty((chunk, group_size), np.float32)
        dz_g = np.empty((chunk, group_size), np.float32)
        decay = np.empty((chunk, n_state, group_size), np.float32)
        states = np.empty((chunk + 1, n_state, group_size), np.float32)  # h[t0 - 1], h[t0], ..., h[t0 + m - 1]
        starts = np.empty((n_chunks, n_state, group_size), np.float32)
        h = np.zeros((n_state, group_size), np.float32)
        for ci in range(n_chunks - 1):  # the states entering each chunk (the last chunk's states are not needed)
            starts[ci] = h
            _group_rows(u, b, c0, ci * chunk, u_g)
            _group_rows(delta, b, c0, ci * chunk, z_g)
            _group_states(B, b, k, ci * chunk, A_g, u_g, z_g, bias_g, softplus, h, dt_g, no_states, no_states)
        starts[n_chunks - 1] = h
        g = np.zeros((n_state, group_size), np.float32)
        a_after = np.zeros((n_state, group_size), np.float32)  # the decay at the position after the chunk
        dA_g = np.zeros((n_state, group_size), np.float32)
        dD_g = np.zeros(group_size, np.float32)
        dbias_g = np.zeros(group_size, np.float32)
        g_dt = np.empty(group_size, np.float32)
        g_decay = np.empty(group_size, np.float32)
        for ci in range(n_chunks - 1, -1, -1):
            t0 = ci * chunk
            m = min(chunk, length - t0)
            _group_rows(u, b, c0, t0, u_g[:m])
            _group_rows(delta, b, c0, t0, z_g[:m])
            _group_rows(dout, b, c0, t0, dy_g[:m])
            h[:] = starts[ci]
            _group_states(B, b, k, t0, A_g, u_g[:m], z_g[:m], bias_g, softplus, h, dt_g, decay, states)
            for t in range(m - 1, -1, -1):
                dt, u_t, dy_t, du_t, ddt = dt_g[t], u_g[t], dy_g[t], du_g[t], dz_g[t]
                for c in range(group_size):
                    du_t[c] = D_g[c] * dy_t[c]
                    ddt[c] = 0.0
                for n in range(n_state):
                    b_tn, c_tn, a_n, g_n = B[b, k, n, t0 + t], C[b, k, n, t0 + t], A_g[n], g[n]
                    a_next = decay[t + 1, n] if t + 1 < m else a_after[n]
                    for c in range(group_size):
                        g_n[c] = a_next[c] * g_n[c] + c_tn * dy_t[c]
                    dC[b, k, n, t0 + t] = _dot(states[t + 1, n], dy_t)
                    for c in range(group_size):
                        g_dt[c] = g_n[c] * dt[c]
                    dB[b, k, n, t0 + t] = _dot(g_dt, u_t)
                    h_prev, a_tn, dA_n = states[t, n], decay[t, n], dA_g[n]
                    for c in range(group_size):
                        g_decay[c] = g_n[c] * h_prev[c] * a_tn[c]  # dL/d(dt*A)
                    for c in range(group_size):
                        du_t[c] += g_dt[c] * b_tn
                    for c in range(group_size):
                        ddt[c] += g_decay[c] * a_n[c] + g_n[c] * u_t[c] * b_tn
                    for c in range(group_size):
                        dA_n[c] += g_decay[c] * dt[c]
                if softplus:  # d softplus / dz = sigmoid(z), as in scan_rows_backward
                    z_t = z_g[t]
                    for c in range(group_size):
                        z = z_t[c] + bias_g[c]
                        e = exp_f32(-abs(z))
                        s = f32(1.0) / (f32(1.0) + e)
                        ddt[c] *= s if z >= f32(0.0) else e * s
                for c in range(group_size):
                    dD_g[c] += dy_t[c] * u_t[c]
                for c in range(group_size):
                    dbias_g[c] += ddt[c]
            a_after[:] = decay[0]
            _ungroup_rows(du_g[:m], b, c0, t0, du)
            _ungroup_rows(dz_g[:m], b, c0, t0, ddelta)
        for c in range(group_size):
            for n in range(n_state):
                dA[b, c0 + c, n] = dA_g[n, c]
            dD[b, c0 + c] = dD_g[c]
            dbias[b, c0 + c] = dbias_g[c]
