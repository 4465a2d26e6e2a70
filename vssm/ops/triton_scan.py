"""Triton kernels of the selective scan, optionally fused with the SS2D cross-scan / cross-merge.

One forward and one backward kernel serve two geometries:

- plain: the sequences of ``selective_scan`` (batch, K*D, L), one program per (batch, channel block, group k);
- cross (SS2D): one feature map u (B, H, W, E) (any strides) read in each of the K=4 scan orders straight from
  memory, the per-direction Δ computed in-kernel from the low-rank projection (dt_low @ W_dt^T + bias), and the K
  outputs summed back onto the map (the cross-merge) with fp32 atomic adds, so no (B, 4, E, L) tensor exists.

Programs: one per (batch, channel block, direction); each walks its sequence chunk by chunk carrying the state, with
the chunk loads software-pipelined (the chain of chunks is what bounds the time, not bandwidth).

Every position is addressed as a pixel (h, w) with per-tensor strides; the plain geometry is H = 1, W = L.
State and accumulation are fp32. The backward recomputes the in-chunk states from the chunk-start states saved by
the forward (B, K, E, n_chunks, N) and runs the adjoint recurrence over chunks in reverse order.
"""
from __future__ import annotations

import triton
import triton.language as tl

ORDER_PLAIN, ORDER_CROSS2D, ORDER_BIDI = 0, 1, 2


@triton.jit
def _combine(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _direction(k, ORDER: tl.constexpr):
    """(column-major?, reversed?) of direction k."""
    if ORDER == 1:
        return (k % 2) == 1, k >= 2
    elif ORDER == 2:
        return k < 0, k >= 2
    else:
        return k < 0, k < 0


@triton.jit
def _pixels(pos, column_major, reverse, H, W, L):
    """Sequence positions of a direction -> (h, w) of the pixels they read."""
    p = tl.where(reverse, L - 1 - pos, pos)
    h = tl.where(column_major, p % H, p // W)
    w = tl.where(column_major, p // H, p % W)
    return h, w


@triton.jit
def _softplus(z):
    # torch's softplus (threshold 20); exp(z) for very negative z, where log(1 + e^z) would round to 0
    # log via log2: tl.log lowers to a branchy libdevice call that splits the scan loop's basic blocks
    return tl.where(z > 20.0, z, tl.where(z < -15.0, tl.exp(z), tl.log2(1.0 + tl.exp(z)) * 0.6931471805599453))


@triton.jit
def _delta(dl_ptr, base_dl, pix_dl, s_dlc, offs_d, offs_r, mask_l, mask_d, R, w_t, bias,
           DT_PROJ: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Pre-activation z (BLOCK_L, BLOCK_D): the given delta, or dt_low (BLOCK_L, R) @ w_t (R, BLOCK_D); plus bias.
    Returns (z, dt_low) (dt_low is None-like zeros when not DT_PROJ)."""
    if DT_PROJ:
        low = tl.load(dl_ptr + base_dl + pix_dl[:, None] + offs_r[None, :] * s_dlc,
                      mask=mask_l[:, None] & (offs_r < R)[None, :], other=0.0).to(tl.float32)
        z = tl.dot(low, w_t, input_precision="ieee")
    else:
        low = tl.zeros((1, 1), dtype=tl.float32)
        z = tl.load(dl_ptr + base_dl + pix_dl[:, None] + offs_d[None, :] * s_dlc,
                    mask=mask_l[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
    if HAS_BIAS:
        z += bias[None, :]
    return z, low


@triton.jit
def _program(E, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr):
    pid = tl.program_id(0)
    n_dblk = tl.cdiv(E, BLOCK_D)
    b = (pid // n_dblk).to(tl.int64)
    offs_d = (pid % n_dblk) * BLOCK_D + tl.arange(0, BLOCK_D)
    return b, tl.program_id(1), offs_d, offs_d < E, tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_R)


@triton.jit
def _direction_params(w_ptr, bias_ptr, a_ptr, d_ptr, k, E, R, N, offs_d, mask_d, offs_n, offs_r,
                      DT_PROJ: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr):
    """This program's slice of the per-direction parameters: W_dt^T (R, D), bias (D), A (N, D), D (D)."""
    mask_nd = (offs_n < N)[:, None] & mask_d[None, :]
    A = tl.load(a_ptr + (k * E + offs_d[None, :]) * N + offs_n[:, None], mask=mask_nd, other=0.0).to(tl.float32)
    w_t = tl.zeros((1, 1), dtype=tl.float32)
    if DT_PROJ:
        w_t = tl.load(w_ptr + (k * E + offs_d[None, :]) * R + offs_r[:, None],
                      mask=(offs_r < R)[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
    bias = tl.zeros(offs_d.shape, dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + k * E + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    Dk = tl.zeros(offs_d.shape, dtype=tl.float32)
    if HAS_D:
        Dk = tl.load(d_ptr + k * E + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    return A, w_t, bias, Dk


_SHAPE_ARGS = ["E", "H", "W", "L", "NCHUNK", "R"]  # one compiled kernel serves every stage / image size


@triton.jit(do_not_specialize=_SHAPE_ARGS + ["CPP", "NPROG"])
def _scan_fwd_kernel(
    u_ptr, dl_ptr, w_ptr, bias_ptr, a_ptr, d_ptr, b_ptr, c_ptr, y_ptr, st_ptr, logp_ptr, send_ptr,
    E, H, W, L, NCHUNK, R, CPP, NPROG,
    su_b, su_k, su_d, su_h, su_w,
    sdl_b, sdl_k, sdl_c, sdl_h, sdl_w,
    sb_b, sb_k, sb_n, sb_h, sb_w,
    sc_b, sc_k, sc_n, sc_h, sc_w,
    sy_b, sy_k, sy_d, sy_h, sy_w,
    K: tl.constexpr, N: tl.constexpr, DT_PROJ: tl.constexpr, ORDER: tl.constexpr, MERGE: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, LOAD_STATE: tl.constexpr,
    SUMMARY: tl.constexpr, STORE_Y: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    """Program (batch x channel block, direction k, run p) scans chunks [p*CPP, (p+1)*CPP) of its sequence.

    With one run per sequence (NPROG == 1) that is the whole scan. With several, a first launch (SUMMARY) stores
    each run's total log-decay and end state from a zero start, `_run_starts_kernel` chains them into each run's
    start state, and a second launch (LOAD_STATE) recomputes the runs from there: the sequential chain shrinks
    from NCHUNK chunks to CPP chunks plus a cheap pass over the runs.
    """
    b, k, offs_d, mask_d, offs_n, offs_r = _program(E, BLOCK_D, BLOCK_N, BLOCK_R)
    run = tl.program_id(2)
    mask_n = offs_n < N
    mask_nd = mask_n[:, None] & mask_d[None, :]
    offs_l = tl.arange(0, BLOCK_L)
    column_major, reverse = _direction(k, ORDER)
    A, w_t, bias, Dk = _direction_params(w_ptr, bias_ptr, a_ptr, d_ptr, k, E, R, N, offs_d, mask_d, offs_n, offs_r,
                                         DT_PROJ, HAS_BIAS, HAS_D)
    run_offs = (((b * K + k) * E + offs_d[None, :]) * NPROG + run) * N + offs_n[:, None]
    if LOAD_STATE:
        h_carry = tl.load(st_ptr + run_offs, mask=mask_nd, other=0.0)
    else:
        h_carry = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    log_decay = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for c in tl.range(run * CPP, tl.minimum(run * CPP + CPP, NCHUNK), num_stages=NUM_STAGES):
        pos = c * BLOCK_L + offs_l
        mask_l = pos < L
        mask_ld = mask_l[:, None] & mask_d[None, :]
        mask_ln = mask_l[:, None] & mask_n[None, :]
        hh, ww = _pixels(pos, column_major, reverse, H, W, L)
        u = tl.load(u_ptr + b * su_b + k * su_k + (hh * su_h + ww * su_w)[:, None] + offs_d[None, :] * su_d,
                    mask=mask_ld, other=0.0).to(tl.float32)
        z, _ = _delta(dl_ptr, b * sdl_b + k * sdl_k, hh * sdl_h + ww * sdl_w, sdl_c, offs_d, offs_r, mask_l, mask_d,
                      R, w_t, bias, DT_PROJ, HAS_BIAS)
        dt = _softplus(z) if SOFTPLUS else z
        Bv = tl.load(b_ptr + b * sb_b + k * sb_k + (hh * sb_h + ww * sb_w)[:, None] + offs_n[None, :] * sb_n,
                     mask=mask_ln, other=0.0).to(tl.float32)
        dA = tl.where(mask_l[:, None, None], dt[:, None, :] * A[None, :, :], 0.0)  # padding passes h on
        decay = tl.exp(dA)
        x = (dt * u)[:, None, :] * Bv[:, :, None]
        decay_prod, h = tl.associative_scan((decay, x), axis=0, combine_fn=_combine)
        if SUMMARY:
            log_decay += tl.sum(dA, axis=0)
        h = h + decay_prod * h_carry[None, :, :]
        h_carry = tl.sum(tl.where((offs_l == BLOCK_L - 1)[:, None, None], h, 0.0), axis=0)
        if STORE_Y:
            Cv = tl.load(c_ptr + b * sc_b + k * sc_k + (hh * sc_h + ww * sc_w)[:, None] + offs_n[None, :] * sc_n,
                         mask=mask_ln, other=0.0).to(tl.float32)
            y = tl.sum(h * Cv[:, :, None], axis=1)
            if HAS_D:
                y += Dk[None, :] * u
            y_ptrs = y_ptr + b * sy_b + k * sy_k + (hh * sy_h + ww * sy_w)[:, None] + offs_d[None, :] * sy_d
            if MERGE:
                tl.atomic_add(y_ptrs, y, mask=mask_ld, sem="relaxed")
            else:
                tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=mask_ld)
    if SUMMARY:
        tl.store(logp_ptr + run_offs, log_decay, mask=mask_nd)
        tl.store(send_ptr + run_offs, h_carry, mask=mask_nd)


@triton.jit(do_not_specialize=["E", "NPROG"])
def _run_starts_kernel(logp_ptr, send_ptr, st_ptr, E, NPROG, K: tl.constexpr, N: tl.constexpr,
                       BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """Start state of every run from the runs' (log-decay, end state from zero): h <- exp(log_decay) h + end."""
    pid = tl.program_id(0)
    n_dblk = tl.cdiv(E, BLOCK_D)
    b = (pid // n_dblk).to(tl.int64)
    k = tl.program_id(1)
    offs_d = (pid % n_dblk) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask = (offs_n < N)[:, None] & (offs_d < E)[None, :]
    base = ((b * K + k) * E + offs_d[None, :]) * NPROG * N + offs_n[:, None]
    h = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for p in range(NPROG):
        tl.store(st_ptr + base + p * N, h, mask=mask)
        h = tl.exp(tl.load(logp_ptr + base + p * N, mask=mask, other=0.0)) * h + tl.load(send_ptr + base + p * N, mask=mask, other=0.0)


@triton.jit(do_not_specialize=_SHAPE_ARGS)
def _scan_bwd_kernel(
    u_ptr, dl_ptr, w_ptr, bias_ptr, a_ptr, d_ptr, b_ptr, c_ptr, dy_ptr, st_ptr,
    du_ptr, ddl_ptr, dw_ptr, dbias_ptr, da_ptr, dd_ptr, db_ptr, dc_ptr,
    E, H, W, L, NCHUNK, R,
    su_b, su_k, su_d, su_h, su_w,
    sdl_b, sdl_k, sdl_c, sdl_h, sdl_w,
    sb_b, sb_k, sb_n, sb_h, sb_w,
    sc_b, sc_k, sc_n, sc_h, sc_w,
    sy_b, sy_k, sy_d, sy_h, sy_w,
    sdu_b, sdu_k, sdu_d, sdu_h, sdu_w,
    sdd_b, sdd_k, sdd_c, sdd_h, sdd_w,
    sdb_b, sdb_k, sdb_n, sdb_h, sdb_w,
    sdc_b, sdc_k, sdc_n, sdc_h, sdc_w,
    K: tl.constexpr, N: tl.constexpr, DT_PROJ: tl.constexpr, ORDER: tl.constexpr, MERGE: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    b, k, offs_d, mask_d, offs_n, offs_r = _program(E, BLOCK_D, BLOCK_N, BLOCK_R)
    mask_n = offs_n < N
    mask_nd = mask_n[:, None] & mask_d[None, :]
    offs_l = tl.arange(0, BLOCK_L)
    column_major, reverse = _direction(k, ORDER)
    A, w_t, bias, Dk = _direction_params(w_ptr, bias_ptr, a_ptr, d_ptr, k, E, R, N, offs_d, mask_d, offs_n, offs_r,
                                         DT_PROJ, HAS_BIAS, HAS_D)
    g_carry = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)  # adjoint state at the next chunk's first position
    acc_a = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    acc_d = tl.zeros((BLOCK_D,), dtype=tl.float32)
    acc_bias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    acc_w = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
    base_u = b * su_b + k * su_k
    base_dl = b * sdl_b + k * sdl_k
    for ci in tl.range(0, NCHUNK, num_stages=NUM_STAGES):
        c = NCHUNK - 1 - ci
        pos = c * BLOCK_L + offs_l
        mask_l = pos < L
        mask_ld = mask_l[:, None] & mask_d[None, :]
        mask_ln = mask_l[:, None] & mask_n[None, :]
        hh, ww = _pixels(pos, column_major, reverse, H, W, L)
        u = tl.load(u_ptr + base_u + (hh * su_h + ww * su_w)[:, None] + offs_d[None, :] * su_d, mask=mask_ld, other=0.0).to(tl.float32)
        z, low = _delta(dl_ptr, base_dl, hh * sdl_h + ww * sdl_w, sdl_c, offs_d, offs_r, mask_l, mask_d, R, w_t, bias,
                        DT_PROJ, HAS_BIAS)
        dt = _softplus(z) if SOFTPLUS else z
        Bv = tl.load(b_ptr + b * sb_b + k * sb_k + (hh * sb_h + ww * sb_w)[:, None] + offs_n[None, :] * sb_n, mask=mask_ln, other=0.0).to(tl.float32)
        Cv = tl.load(c_ptr + b * sc_b + k * sc_k + (hh * sc_h + ww * sc_w)[:, None] + offs_n[None, :] * sc_n, mask=mask_ln, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + b * sy_b + k * sy_k + (hh * sy_h + ww * sy_w)[:, None] + offs_d[None, :] * sy_d, mask=mask_ld, other=0.0).to(tl.float32)
        # states inside the chunk, from the chunk-start state
        decay = tl.where(mask_l[:, None, None], tl.exp(dt[:, None, :] * A[None, :, :]), 1.0)
        x = (dt * u)[:, None, :] * Bv[:, :, None]
        decay_prod, h = tl.associative_scan((decay, x), axis=0, combine_fn=_combine)
        h0 = tl.load(st_ptr + (((b * K + k) * E + offs_d[None, :]) * NCHUNK + c) * N + offs_n[:, None], mask=mask_nd, other=0.0)
        h = h + decay_prod * h0[None, :, :]
        # decay of the next position, a_{t+1}, recomputed from memory (0 past the end: the adjoint starts at 0)
        pos_n = pos + 1
        mask_n1 = pos_n < L
        hn, wn = _pixels(pos_n, column_major, reverse, H, W, L)
        z_n, _ = _delta(dl_ptr, base_dl, hn * sdl_h + wn * sdl_w, sdl_c, offs_d, offs_r, mask_n1, mask_d, R, w_t, bias,
                        DT_PROJ, HAS_BIAS)
        dt_n = _softplus(z_n) if SOFTPLUS else z_n
        decay_next = tl.where(mask_n1[:, None, None], tl.exp(dt_n[:, None, :] * A[None, :, :]), 0.0)
        # adjoint: g_t = C_t dy_t + a_{t+1} g_{t+1}
        beta = Cv[:, :, None] * dy[:, None, :]
        prod_rev, g = tl.associative_scan((decay_next, beta), axis=0, combine_fn=_combine, reverse=True)
        g = g + prod_rev * g_carry[None, :, :]
        g_carry = tl.sum(tl.where((offs_l == 0)[:, None, None], g, 0.0), axis=0)
        g = tl.where(mask_l[:, None, None], g, 0.0)
        d_log_decay = g * (h - x)  # a_t h_{t-1} = h_t - x_t
        gB = tl.sum(g * Bv[:, :, None], axis=1)  # (L, D)
        d_dt = tl.sum(d_log_decay * A[None, :, :], axis=1) + gB * u
        du = gB * dt
        if HAS_D:
            du += Dk[None, :] * dy
            acc_d += tl.sum(dy * u, axis=0)
        acc_a += tl.sum(d_log_decay * dt[:, None, :], axis=0)
        db_part = tl.sum(g * (dt * u)[:, None, :], axis=2)  # (L, N): this channel block's share
        dc_part = tl.sum(h * dy[:, None, :], axis=2)
        tl.atomic_add(db_ptr + b * sdb_b + k * sdb_k + (hh * sdb_h + ww * sdb_w)[:, None] + offs_n[None, :] * sdb_n, db_part, mask=mask_ln, sem="relaxed")
        tl.atomic_add(dc_ptr + b * sdc_b + k * sdc_k + (hh * sdc_h + ww * sdc_w)[:, None] + offs_n[None, :] * sdc_n, dc_part, mask=mask_ln, sem="relaxed")
        if SOFTPLUS:
            d_dt = tl.where(z > 20.0, d_dt, d_dt / (1.0 + tl.exp(-z)))
        d_dt = tl.where(mask_ld, d_dt, 0.0)
        acc_bias += tl.sum(d_dt, axis=0)
        pix_dd = hh * sdd_h + ww * sdd_w
        if DT_PROJ:
            d_low = tl.dot(d_dt, tl.trans(w_t), input_precision="ieee")  # (L, R)
            tl.atomic_add(ddl_ptr + b * sdd_b + k * sdd_k + pix_dd[:, None] + offs_r[None, :] * sdd_c, d_low,
                          mask=mask_l[:, None] & (offs_r < R)[None, :], sem="relaxed")
            acc_w += tl.dot(tl.trans(low), d_dt, input_precision="ieee")
        else:
            tl.store(ddl_ptr + b * sdd_b + k * sdd_k + pix_dd[:, None] + offs_d[None, :] * sdd_c, d_dt, mask=mask_ld)
        du_ptrs = du_ptr + b * sdu_b + k * sdu_k + (hh * sdu_h + ww * sdu_w)[:, None] + offs_d[None, :] * sdu_d
        if MERGE:
            tl.atomic_add(du_ptrs, du, mask=mask_ld, sem="relaxed")
        else:
            tl.store(du_ptrs, du, mask=mask_ld)
    tl.atomic_add(da_ptr + (k * E + offs_d[None, :]) * N + offs_n[:, None], acc_a, mask=mask_nd, sem="relaxed")
    if HAS_D:
        tl.atomic_add(dd_ptr + k * E + offs_d, acc_d, mask=mask_d, sem="relaxed")
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + k * E + offs_d, acc_bias, mask=mask_d, sem="relaxed")
    if DT_PROJ:
        tl.atomic_add(dw_ptr + (k * E + offs_d[None, :]) * R + offs_r[:, None], acc_w,
                      mask=(offs_r < R)[:, None] & mask_d[None, :], sem="relaxed")


@triton.jit
def _seq_operands(t, L, column_major, reverse, H, W, u_base, su_h, su_w, dl_rows, sdl_h, sdl_w, b_rows, sb_h, sb_w,
                  c_rows, sc_h, sc_w, dy_base, sdy_h, sdy_w, mask_1d, mask_dl, mask_nd, HAS_DY: tl.constexpr):
    """Operands of sequence position t (zeros outside [0, L)): u (1, D), dt_low (R, D) or delta (1, D), B and C
    (N, D) broadcast over the lanes, dy (1, D) in the backward, and the pixel (h, w) the position reads."""
    valid = (t >= 0) & (t < L)
    hh, ww = _pixels(t, column_major, reverse, H, W, L)
    u = tl.load(u_base + hh * su_h + ww * su_w, mask=mask_1d & valid, other=0.0).to(tl.float32)
    dl = tl.load(dl_rows + hh * sdl_h + ww * sdl_w, mask=mask_dl & valid, other=0.0).to(tl.float32)
    Bv = tl.load(b_rows + hh * sb_h + ww * sb_w, mask=mask_nd & valid, other=0.0).to(tl.float32)
    Cv = tl.load(c_rows + hh * sc_h + ww * sc_w, mask=mask_nd & valid, other=0.0).to(tl.float32)
    if HAS_DY:
        dy = tl.load(dy_base + hh * sdy_h + ww * sdy_w, mask=mask_1d & valid, other=0.0).to(tl.float32)
    else:
        dy = u
    return u, dl, Bv, Cv, dy, hh, ww


@triton.jit
def _seq_step_terms(u, dl, Bv, A, w_t, bias, DT_PROJ: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """(decay, input, dt, z) of one position: exp(dt A) and dt B u (N, D); dt = softplus(z) and z (1, D), z from
    dt_low (R, D) @ W_dt or the given delta (1, D), plus the bias."""
    if DT_PROJ:
        z = tl.sum(dl * w_t, axis=0, keep_dims=True)
    else:
        z = dl
    if HAS_BIAS:
        z += bias[None, :]
    dt = _softplus(z) if SOFTPLUS else z
    return tl.exp(dt * A), Bv * (dt * u), dt, z


@triton.jit
def _seq_span(h, t_start, t_end, L, column_major, reverse, H, W, u_base, su_h, su_w, dl_rows, sdl_h, sdl_w,
              b_rows, sb_h, sb_w, c_rows, sc_h, sc_w, y_base, sy_h, sy_w, st_base, scratch, mask_1d, mask_dl,
              mask_nd, A, w_t, bias, Dk,
              N: tl.constexpr, DT_PROJ: tl.constexpr, MERGE: tl.constexpr, SOFTPLUS: tl.constexpr,
              HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, STORE_Y: tl.constexpr, SAVE_STATES: tl.constexpr,
              TO_SCRATCH: tl.constexpr, CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Scan positions [t_start, t_end) from state h (N, D); returns the final state.

    Writes, as asked: y (merged with atomic adds or stored), the state entering every CHUNK positions
    (SAVE_STATES), or every state h_t into the program's scratch tile (TO_SCRATCH, for the backward).
    Software-pipelined by hand: operands are loaded two positions ahead and the decay / input terms computed one
    ahead, so only h = decay * h + input is on the serial chain.
    """
    u0, dl0, B0, C0, _, h0, w0 = _seq_operands(t_start, L, column_major, reverse, H, W, u_base, su_h, su_w, dl_rows,
                                               sdl_h, sdl_w, b_rows, sb_h, sb_w, c_rows, sc_h, sc_w, u_base, 0, 0,
                                               mask_1d, mask_dl, mask_nd, False)
    u1, dl1, B1, C1, _, h1, w1 = _seq_operands(t_start + 1, L, column_major, reverse, H, W, u_base, su_h, su_w,
                                               dl_rows, sdl_h, sdl_w, b_rows, sb_h, sb_w, c_rows, sc_h, sc_w, u_base,
                                               0, 0, mask_1d, mask_dl, mask_nd, False)
    decay0, x0, _, _ = _seq_step_terms(u0, dl0, B0, A, w_t, bias, DT_PROJ, HAS_BIAS, SOFTPLUS)
    for t in range(t_start, t_end):
        u2, dl2, B2, C2, _, h2, w2 = _seq_operands(t + 2, L, column_major, reverse, H, W, u_base, su_h, su_w,
                                                   dl_rows, sdl_h, sdl_w, b_rows, sb_h, sb_w, c_rows, sc_h, sc_w,
                                                   u_base, 0, 0, mask_1d, mask_dl, mask_nd, False)
        decay1, x1, _, _ = _seq_step_terms(u1, dl1, B1, A, w_t, bias, DT_PROJ, HAS_BIAS, SOFTPLUS)
        if SAVE_STATES:
            if t % CHUNK == 0:
                tl.store(st_base + (t // CHUNK) * N, h, mask=mask_nd)
        h = decay0 * h + x0
        if TO_SCRATCH:
            tl.store(scratch + (t - t_start) * (BLOCK_N * BLOCK_D), h)
        if STORE_Y:
            y = tl.sum(h * C0, axis=0, keep_dims=True)
            if HAS_D:
                y += Dk[None, :] * u0
            y_ptrs = y_base + h0 * sy_h + w0 * sy_w
            if MERGE:
                tl.atomic_add(y_ptrs, y, mask=mask_1d, sem="relaxed")
            else:
                tl.store(y_ptrs, y.to(y_base.dtype.element_ty), mask=mask_1d)
        decay0, x0, u0, C0, h0, w0 = decay1, x1, u1, C1, h1, w1
        u1, dl1, B1, C1, h1, w1 = u2, dl2, B2, C2, h2, w2
    return h


@triton.jit
def _seq_setup(u_ptr, dl_ptr, w_ptr, bias_ptr, a_ptr, d_ptr, b_ptr, c_ptr, E, R, N,
               su_b, su_k, su_d, sdl_b, sdl_k, sdl_c, sb_b, sb_k, sb_n, sc_b, sc_k, sc_n,
               DT_PROJ: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr,
               BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr):
    """This program's (batch, channel block, direction) view: its parameters and per-position row pointers."""
    b, k, offs_d, mask_d, offs_n, offs_r = _program(E, BLOCK_D, BLOCK_N, BLOCK_R)
    lane_d = offs_d[None, :]
    mask_nd = (offs_n < N)[:, None] & mask_d[None, :]
    mask_1d = (lane_d >= 0) & mask_d[None, :]
    A, w_t, bias, Dk = _direction_params(w_ptr, bias_ptr, a_ptr, d_ptr, k, E, R, N, offs_d, mask_d, offs_n, offs_r,
                                         DT_PROJ, HAS_BIAS, HAS_D)
    u_base = u_ptr + b * su_b + k * su_k + lane_d * su_d
    if DT_PROJ:
        dl_rows = dl_ptr + b * sdl_b + k * sdl_k + offs_r[:, None] * sdl_c + lane_d * 0
        mask_dl = (offs_r < R)[:, None] & mask_d[None, :]
    else:
        dl_rows = dl_ptr + b * sdl_b + k * sdl_k + lane_d * sdl_c
        mask_dl = mask_1d
    b_rows = b_ptr + b * sb_b + k * sb_k + offs_n[:, None] * sb_n + lane_d * 0
    c_rows = c_ptr + b * sc_b + k * sc_k + offs_n[:, None] * sc_n + lane_d * 0
    return b, k, lane_d, mask_1d, mask_dl, mask_nd, A, w_t, bias, Dk, u_base, dl_rows, b_rows, c_rows


@triton.jit(do_not_specialize=_SHAPE_ARGS)
def _scan_fwd_seq_kernel(
    u_ptr, dl_ptr, w_ptr, bias_ptr, a_ptr, d_ptr, b_ptr, c_ptr, y_ptr, st_ptr,
    E, H, W, L, NCHUNK, R,
    su_b, su_k, su_d, su_h, su_w,
    sdl_b, sdl_k, sdl_c, sdl_h, sdl_w,
    sb_b, sb_k, sb_n, sb_h, sb_w,
    sc_b, sc_k, sc_n, sc_h, sc_w,
    sy_b, sy_k, sy_d, sy_h, sy_w,
    K: tl.constexpr, N: tl.constexpr, DT_PROJ: tl.constexpr, ORDER: tl.constexpr, MERGE: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SAVE_STATES: tl.constexpr,
    STORE_Y: tl.constexpr, CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """Program (batch x channel block, direction k) walks its whole sequence one position at a time.

    Every lane owns channels and keeps their state in registers: the recurrence needs no shuffles or shared
    memory, and every per-position operand is a (rows, BLOCK_D) tile whose rows (state n, low-rank r) stay in the
    lane (B, C and dt_low are loaded broadcast), so nothing changes layout inside the loop.
    With SAVE_STATES the state entering every CHUNK positions is stored (B, K, E, NCHUNK, N) for the backward.
    """
    b, k, lane_d, mask_1d, mask_dl, mask_nd, A, w_t, bias, Dk, u_base, dl_rows, b_rows, c_rows = _seq_setup(
        u_ptr, dl_ptr, w_ptr, bias_ptr, a_ptr, d_ptr, b_ptr, c_ptr, E, R, N, su_b, su_k, su_d, sdl_b, sdl_k, sdl_c,
        sb_b, sb_k, sb_n, sc_b, sc_k, sc_n, DT_PROJ, HAS_BIAS, HAS_D, BLOCK_D, BLOCK_N, BLOCK_R)
    column_major, reverse = _direction(k, ORDER)
    y_base = y_ptr + b * sy_b + k * sy_k + lane_d * sy_d
    st_base = st_ptr + (((b * K + k) * E + lane_d) * NCHUNK) * N + tl.arange(0, BLOCK_N)[:, None]
    h = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    _seq_span(h, 0, L, L, column_major, reverse, H, W, u_base, su_h, su_w, dl_rows, sdl_h, sdl_w, b_rows, sb_h, sb_w,
              c_rows, sc_h, sc_w, y_base, sy_h, sy_w, st_base, st_base, mask_1d, mask_dl, mask_nd, A, w_t, bias, Dk,
              N, DT_PROJ, MERGE, SOFTPLUS, HAS_D, HAS_BIAS, STORE_Y, SAVE_STATES, False, CHUNK, BLOCK_N, BLOCK_D)


@triton.jit(do_not_specialize=_SHAPE_ARGS)
def _scan_bwd_seq_kernel(
    u_ptr, dl_ptr, w_ptr, bias_ptr, a_ptr, d_ptr, b_ptr, c_ptr, dy_ptr, st_ptr, scratch_ptr,
    du_ptr, ddl_ptr, dw_ptr, dbias_ptr, da_ptr, dd_ptr, db_ptr, dc_ptr,
    E, H, W, L, NCHUNK, R,
    su_b, su_k, su_d, su_h, su_w,
    sdl_b, sdl_k, sdl_c, sdl_h, sdl_w,
    sb_b, sb_k, sb_n, sb_h, sb_w,
    sc_b, sc_k, sc_n, sc_h, sc_w,
    sy_b, sy_k, sy_d, sy_h, sy_w,
    sdu_b, sdu_k, sdu_d, sdu_h, sdu_w,
    sdd_b, sdd_k, sdd_c, sdd_h, sdd_w,
    sdb_b, sdb_k, sdb_n, sdb_h, sdb_w,
    sdc_b, sdc_k, sdc_n, sdc_h, sdc_w,
    K: tl.constexpr, N: tl.constexpr, DT_PROJ: tl.constexpr, ORDER: tl.constexpr, MERGE: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
    CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
    CHUNK_SUMS: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """Adjoint of the sequential scan, chunk by chunk from the end: each chunk's states are recomputed from its
    saved start state into the program's scratch tile (CHUNK, N, D), then the chunk is walked backwards with
    g_t = C_t dy_t + a_{t+1} g_{t+1}. Sums over the lanes (dB, dC, d dt_low) are added by one lane per block."""
    b, k, lane_d, mask_1d, mask_dl, mask_nd, A, w_t, bias, Dk, u_base, dl_rows, b_rows, c_rows = _seq_setup(
        u_ptr, dl_ptr, w_ptr, bias_ptr, a_ptr, d_ptr, b_ptr, c_ptr, E, R, N, su_b, su_k, su_d, sdl_b, sdl_k, sdl_c,
        sb_b, sb_k, sb_n, sc_b, sc_k, sc_n, DT_PROJ, HAS_BIAS, HAS_D, BLOCK_D, BLOCK_N, BLOCK_R)
    column_major, reverse = _direction(k, ORDER)
    offs_n = tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, BLOCK_R)
    first_lane = (lane_d % BLOCK_D) == 0
    dy_base = dy_ptr + b * sy_b + k * sy_k + lane_d * sy_d
    st_base = st_ptr + (((b * K + k) * E + lane_d) * NCHUNK) * N + offs_n[:, None]
    # scratch per program: the chunk's states (CHUNK, N, D), then the terms summed over the lanes at the chunk's end
    # (1 + 2N, CHUNK, D): d dt (for d dt_low = d dt @ W_dt^T), dB and dC terms
    region = scratch_ptr + (tl.program_id(0) * K + k) * (CHUNK * BLOCK_D * (1 + 3 * BLOCK_N))
    scratch = region + offs_n[:, None] * BLOCK_D + lane_d % BLOCK_D
    sums0 = region + CHUNK * BLOCK_N * BLOCK_D
    sums = sums0 + lane_d % BLOCK_D
    w_sum = _sum_weights(w_ptr, k, E, R, lane_d, DT_PROJ, BLOCK_D, BLOCK_W)
    du_base = du_ptr + b * sdu_b + k * sdu_k + lane_d * sdu_d
    if DT_PROJ:
        ddl_rows = ddl_ptr + b * sdd_b + k * sdd_k + offs_r[:, None] * sdd_c + lane_d * 0
        mask_ddl = (offs_r < R)[:, None] & first_lane
    else:
        ddl_rows = ddl_ptr + b * sdd_b + k * sdd_k + lane_d * sdd_c
        mask_ddl = mask_1d
    db_rows = db_ptr + b * sdb_b + k * sdb_k + offs_n[:, None] * sdb_n + lane_d * 0
    dc_rows = dc_ptr + b * sdc_b + k * sdc_k + offs_n[:, None] * sdc_n + lane_d * 0
    mask_n1 = (offs_n < N)[:, None] & first_lane
    g = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)  # adjoint of h at the position after the current one
    decay_next = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)  # a_{t+1}
    acc_a = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    acc_d = tl.zeros((1, BLOCK_D), dtype=tl.float32)
    acc_bias = tl.zeros((1, BLOCK_D), dtype=tl.float32)
    acc_w = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
    for ci in range(0, NCHUNK):
        t0 = (NCHUNK - 1 - ci) * CHUNK
        t1 = tl.minimum(t0 + CHUNK, L)
        h_start = tl.load(st_base + (NCHUNK - 1 - ci) * N, mask=mask_nd, other=0.0)
        _seq_span(h_start, t0, t1, L, column_major, reverse, H, W, u_base, su_h, su_w, dl_rows, sdl_h, sdl_w, b_rows,
                  sb_h, sb_w, c_rows, sc_h, sc_w, u_base, 0, 0, st_base, scratch, mask_1d, mask_dl, mask_nd, A, w_t,
                  bias, Dk, N, DT_PROJ, MERGE, SOFTPLUS, HAS_D, HAS_BIAS, False, False, True, CHUNK, BLOCK_N, BLOCK_D)
        u1, dl1, B1, C1, dy1, h1, w1 = _seq_operands(t1 - 1, L, column_major, reverse, H, W, u_base, su_h, su_w,
                                                     dl_rows, sdl_h, sdl_w, b_rows, sb_h, sb_w, c_rows, sc_h, sc_w,
                                                     dy_base, sy_h, sy_w, mask_1d, mask_dl, mask_nd, True)
        for i in range(0, t1 - t0):
            t = t1 - 1 - i
            u, dl, Bv, Cv, dy, hh, ww = u1, dl1, B1, C1, dy1, h1, w1
            u1, dl1, B1, C1, dy1, h1, w1 = _seq_operands(t - 1, L, column_major, reverse, H, W, u_base, su_h, su_w,
                                                         dl_rows, sdl_h, sdl_w, b_rows, sb_h, sb_w, c_rows, sc_h,
                                                         sc_w, dy_base, sy_h, sy_w, mask_1d, mask_dl, mask_nd, True)
            decay, x, dt, z = _seq_step_terms(u, dl, Bv, A, w_t, bias, DT_PROJ, HAS_BIAS, SOFTPLUS)
            h = tl.load(scratch + (t - t0) * (BLOCK_N * BLOCK_D))
            g = Cv * dy + decay_next * g
            decay_next = decay
            d_log_decay = g * (h - x)  # a_t h_{t-1} = h_t - x_t
            gB = tl.sum(g * Bv, axis=0, keep_dims=True)
            d_dt = tl.sum(d_log_decay * A, axis=0, keep_dims=True) + gB * u
            du = gB * dt
            if HAS_D:
                du += Dk[None, :] * dy
                acc_d += dy * u
            acc_a += d_log_decay * dt
            if SOFTPLUS:
                d_dt = tl.where(z > 20.0, d_dt, d_dt / (1.0 + tl.exp(-z)))
            d_dt = tl.where(mask_1d, d_dt, 0.0)
            acc_bias += d_dt
            if DT_PROJ:
                acc_w += dl * d_dt
            pix_dd = hh * sdd_h + ww * sdd_w
            if CHUNK_SUMS:
                # the sums over the lanes wait for the chunk's end (one small matmul instead of shuffles per step)
                row = sums + (t - t0) * BLOCK_D
                if DT_PROJ:
                    tl.store(row, d_dt)
                tl.store(row + (1 + offs_n[:, None]) * (CHUNK * BLOCK_D), g * (dt * u))
                tl.store(row + (1 + BLOCK_N + offs_n[:, None]) * (CHUNK * BLOCK_D), h * dy)
            else:
                tl.atomic_add(db_rows + hh * sdb_h + ww * sdb_w,
                              tl.broadcast_to(tl.sum(g * (dt * u), axis=1, keep_dims=True), g.shape),
                              mask=mask_n1, sem="relaxed")
                tl.atomic_add(dc_rows + hh * sdc_h + ww * sdc_w,
                              tl.broadcast_to(tl.sum(h * dy, axis=1, keep_dims=True), g.shape), mask=mask_n1,
                              sem="relaxed")
                if DT_PROJ:
                    d_low = tl.broadcast_to(tl.sum(w_t * d_dt, axis=1, keep_dims=True), w_t.shape)
                    tl.atomic_add(ddl_rows + pix_dd, d_low, mask=mask_ddl, sem="relaxed")
            if not DT_PROJ:
                tl.store(ddl_rows + pix_dd, d_dt, mask=mask_ddl)
            du_ptrs = du_base + hh * sdu_h + ww * sdu_w
            if MERGE:
                tl.atomic_add(du_ptrs, du, mask=mask_1d, sem="relaxed")
            else:
                tl.store(du_ptrs, du, mask=mask_1d)
        if CHUNK_SUMS:
            _seq_chunk_sums(sums0, w_sum, t0, t1, L, column_major, reverse, H, W, ddl_ptr + b * sdd_b + k * sdd_k,
                            sdd_c, sdd_h, sdd_w, db_ptr + b * sdb_b + k * sdb_k, sdb_n, sdb_h, sdb_w,
                            dc_ptr + b * sdc_b + k * sdc_k, sdc_n, sdc_h, sdc_w, R, N, DT_PROJ, CHUNK, BLOCK_D,
                            BLOCK_N, BLOCK_W)
    _seq_param_grads(da_ptr, dd_ptr, dbias_ptr, dw_ptr, k, E, R, N, lane_d, mask_nd, mask_1d, acc_a, acc_d, acc_bias,
                     acc_w, DT_PROJ, HAS_D, HAS_BIAS, BLOCK_N, BLOCK_R)


@triton.jit
def _sum_weights(w_ptr, k, E, R, lane_d, DT_PROJ: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_W: tl.constexpr):
    """(BLOCK_D, BLOCK_W) right factor of the chunk sums: W_dt^T of this channel block in columns [0, R), ones in the
    last column (plain sums over the channels)."""
    offs_d = tl.reshape(lane_d, (BLOCK_D,))[:, None]
    cols = tl.arange(0, BLOCK_W)[None, :]
    w = tl.where(cols == BLOCK_W - 1, 1.0, 0.0) + tl.zeros((BLOCK_D, BLOCK_W), dtype=tl.float32)
    if DT_PROJ:
        w += tl.load(w_ptr + (k * E + offs_d) * R + cols, mask=(offs_d < E) & (cols < R), other=0.0).to(tl.float32)
    return w


@triton.jit
def _seq_chunk_sums(sums, w_sum, t0, t1, L, column_major, reverse, H, W, ddl_base, sdd_c, sdd_h, sdd_w,
                    db_base, sdb_n, sdb_h, sdb_w, dc_base, sdc_n, sdc_h, sdc_w, R, N,
                    DT_PROJ: tl.constexpr, CHUNK: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_W: tl.constexpr):
    """Sum a chunk's stored per-lane terms over the channels and add them to d dt_low, dB and dC.

    The rows of the scratch (kind, position) are multiplied by w_sum: d dt rows give d dt_low in the columns
    [0, R), the dB / dC rows their channel sums in the last column."""
    ROWS: tl.constexpr = 32
    cols = tl.arange(0, BLOCK_W)[None, :]
    for rb in range(0, (1 + 2 * BLOCK_N) * CHUNK, ROWS):
        rows = rb + tl.arange(0, ROWS)
        kind = rows // CHUNK
        t = t0 + rows % CHUNK
        valid = ((t < t1) & (rows < (1 + 2 * BLOCK_N) * CHUNK))[:, None]
        tile = tl.load(sums + rows[:, None] * BLOCK_D + tl.arange(0, BLOCK_D)[None, :], mask=valid, other=0.0)
        out = tl.dot(tile, w_sum, input_precision="tf32x3")
        hh, ww = _pixels(t, column_major, reverse, H, W, L)
        n_b = kind - 1
        n_c = kind - 1 - BLOCK_N
        ptr = tl.where((kind == 0)[:, None], ddl_base + (hh * sdd_h + ww * sdd_w)[:, None] + cols * sdd_c,
                       tl.where((kind <= BLOCK_N)[:, None], db_base + (hh * sdb_h + ww * sdb_w + n_b * sdb_n)[:, None],
                                dc_base + (hh * sdc_h + ww * sdc_w + n_c * sdc_n)[:, None]) + cols * 0)
        is_sum = (cols == BLOCK_W - 1) & (((kind >= 1) & (n_b < N)) | ((n_c >= 0) & (n_c < N)))[:, None]
        mask = valid & (is_sum | (((kind == 0)[:, None] & (cols < R)) & DT_PROJ))
        tl.atomic_add(ptr, out, mask=mask, sem="relaxed")


@triton.jit
def _seq_param_grads(da_ptr, dd_ptr, dbias_ptr, dw_ptr, k, E, R, N, lane_d, mask_nd, mask_1d, acc_a, acc_d, acc_bias,
                     acc_w, DT_PROJ: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr):
    """Add this program's sums into the parameter gradients dA (K*E, N), dD, dbias (K*E,), dW (K, E, R)."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, BLOCK_R)
    tl.atomic_add(da_ptr + (k * E + lane_d) * N + offs_n[:, None], acc_a, mask=mask_nd, sem="relaxed")
    if HAS_D:
        tl.atomic_add(dd_ptr + k * E + lane_d, acc_d, mask=mask_1d, sem="relaxed")
    if HAS_BIAS:
        tl.atomic_add(dbias_ptr + k * E + lane_d, acc_bias, mask=mask_1d, sem="relaxed")
    if DT_PROJ:
        tl.atomic_add(dw_ptr + (k * E + lane_d) * R + offs_r[:, None], acc_w,
                      mask=(offs_r < R)[:, None] & mask_1d, sem="relaxed")
