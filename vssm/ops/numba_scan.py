"""numba kernels of the selective scan on CPU (wrappers: vssm/ops/cpu_ops.py). numba is a pip wheel that bundles
LLVM, so this still needs no compiler on the user's machine; it is imported only when a CPU scan runs.

Why a kernel: in eager PyTorch every elementwise step of the scan is its own pass over memory and softplus / exp
dominate (on a 2-core VM, per million fp32 elements: softplus 1.8 ms, exp 0.5 ms, a multiply 0.1 ms), so the
portable backend cannot go below ~6 ms at VMamba-T stage-1 shapes (benchmarks/results/scan-cpu-2026-11-22.md).
Here channels are processed in chunks of positions that stay in L1: a vectorised pass computes dt = softplus(z)
and the decay exp(dt*A) with a polynomial exp and log1p that LLVM turns into SIMD code (libm's expf / log1pf are
scalar calls that block vectorisation), then a scalar pass runs the recurrence h_t = a_t h_{t-1} + dt_t u_t B_t.
The backward recomputes the chunk's states from the state entering it and runs the adjoint the same way.

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
