"""Triton kernels of the selective scan, optionally fused with the SS2D cross-scan / cross-merge.

One forward and one backward kernel serve two geometries:

- plain: the sequences of ``selective_scan`` (batch, K*D, L), one program per (batch, channel block, group k);
- cross (SS2D): one feature map u (B, H, W, E) (any strides) read in each of the K=4 scan orders straight from
  memory, and the K outputs summed back onto the map (the cross-merge) with fp32 atomic adds, so no (B, 4, E, L)
  tensor of the scan's input or output exists. Both kernels can compute each direction's Δ pre-activation
  in-kernel from the low-rank projection (dt_low @ W_dt^T, small ranks); otherwise they read the pre-activation z
  that the launcher computed with a GEMM. The backward writes dL/dz for the launcher's GEMMs (d(dt_low), dW).

Programs: one per (batch, channel block, direction); each walks its sequence chunk by chunk carrying the state, with
the chunk loads software-pipelined.

Every position is addressed as a pixel (h, w) with per-tensor strides; the plain geometry is H = 1, W = L, and its
positions are taken as such (FLAT: the compiler then sees them contiguous). State and accumulation are fp32. The
backward recomputes the in-chunk states from the chunk-start states (B, K, n_chunks, N, E), kept by the forward
(STORE_STATES) or recomputed by a forward pass, and runs the adjoint recurrence over chunks in reverse order.
"""
from __future__ import annotations

import triton
import triton.language as tl

ORDER_PLAIN, ORDER_CROSS2D, ORDER_BIDI = 0, 1, 2


@triton.jit
def _combine(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _combine_shifted(first1, p1, s1, first2, p2, s2):
    """Reverse-scan combine of the adjoint g_t = beta_t + a_{t+1} g_{t+1} on elements (a_t, 1, beta_t): a segment
    [i, j] is (a_i, prod a_{i+1..j}, its g_i from g_{j+1} = 0), so a_{t+1} never has to be shifted into row t.
    (first1, p1, s1) is the later segment, (first2, p2, s2) the earlier one."""
    t = p2 * first1
    return first2, t * p1, s2 + t * s1


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
def _divmod(p, n):
    """(p // n, p % n) for 0 <= p < 2**20 through an fp32 reciprocal: an integer division by a runtime value costs
    ~25 instructions per element, more than the rest of the scan step. Exact there: the fp32 error of
    (p + 0.5) / n stays below the 0.5 / n that separates it from the nearest integer (launchers check L)."""
    q = ((p.to(tl.float32) + 0.5) * (1.0 / n.to(tl.float32))).to(tl.int32)
    return q, p - q * n


@triton.jit
def _pixels(pos, column_major, reverse, H, W, L, FLAT: tl.constexpr):
    """Sequence positions of a direction -> (h, w) of the pixels they read. FLAT (one row scanned forward, the plain
    geometry): w = pos as such, so the compiler sees that consecutive positions are consecutive in memory and lays
    the tiles out along L (coalesced loads and stores; through the runtime division it could not, and a warp's
    load touched 32 rows)."""
    if FLAT:
        return tl.zeros_like(pos), pos
    p = tl.where(reverse, L - 1 - pos, pos)
    q, r = _divmod(p, tl.where(column_major, H, W))
    return tl.where(column_major, r, q), tl.where(column_major, q, r)


LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _mufu(x, ASM: tl.constexpr):
    """One special-function-unit instruction per element (CUDA only)."""
    return tl.inline_asm_elementwise(ASM, "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _exp2(x, FAST_MATH: tl.constexpr):
    """2^x. FAST_MATH (CUDA): the bare MUFU ex2 with subnormal results flushed to 0 (tl.exp / tl.exp2 wrap it in a
    rescaling for subnormals: 5 instructions instead of 1); the interpreter (CI) runs the exact form."""
    if FAST_MATH:
        return _mufu(x, "ex2.approx.ftz.f32 $0, $1;")
    else:
        return tl.exp2(x)


@triton.jit
def _log2(x, FAST_MATH: tl.constexpr):
    """log2(x). FAST_MATH: MUFU lg2 (~2^-22 relative error) instead of libdevice's ~20-instruction polynomial."""
    if FAST_MATH:
        return _mufu(x, "lg2.approx.f32 $0, $1;")
    else:
        return tl.log2(x)


@triton.jit
def _delta2(z2, SOFTPLUS: tl.constexpr, FAST_MATH: tl.constexpr):
    """Δ·log2(e) from the pre-activation z2 = z·log2(e), and e^z (for the backward's sigmoid).

    The kernels work in base 2 (exp(Δ·A) = 2^(Δ·log2(e)·A)) so every exponential is one MUFU instruction. The
    softplus is torch's (threshold 20); below z = -15, where log(1 + e^z) rounds to 0, it is e^z."""
    e = _exp2(z2, FAST_MATH)
    if SOFTPLUS:
        d2 = tl.where(z2 > 20.0 * LOG2E, z2, tl.where(z2 < -15.0 * LOG2E, e * LOG2E, _log2(1.0 + e, FAST_MATH)))
    else:
        d2 = z2
    return d2, e


@triton.jit
def _delta(dl_ptr, base_dl, pix_dl, s_dlc, offs_d, mask_l, mask_d, w_ptr, k, E, bias2,
           R: tl.constexpr, DT_PROJ: tl.constexpr):
    """Pre-activation in base 2, z·log2(e) (BLOCK_L, BLOCK_D): the given delta / pre-activation, or (small ranks:
    triton_ops.DT_GEMM_MIN_RANK) dt_low (BLOCK_L, R) @ W_dt^T (R, BLOCK_D); plus the bias (bias2 is already
    scaled by log2(e)).

    The rank-R product is R broadcast FMAs per element: a tl.dot would pad R to 16 and move both operands through
    shared memory."""
    z2 = tl.zeros((mask_l.shape[0], offs_d.shape[0]), dtype=tl.float32) + bias2[None, :]
    if DT_PROJ:
        for r in tl.static_range(R):
            low_r = tl.load(dl_ptr + base_dl + pix_dl + r * s_dlc, mask=mask_l, other=0.0).to(tl.float32)
            w_r = tl.load(w_ptr + (k * E + offs_d) * R + r, mask=mask_d, other=0.0).to(tl.float32) * LOG2E
            z2 += low_r[:, None] * w_r[None, :]
    else:
        z = tl.load(dl_ptr + base_dl + pix_dl[:, None] + offs_d[None, :] * s_dlc,
                    mask=mask_l[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
        z2 += z * LOG2E
    return z2


@triton.jit
def _program(E, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, EVEN_D: tl.constexpr):
    """(batch, direction, channel offsets, channel mask, state offsets) of this program. EVEN_D (E a multiple of
    BLOCK_D): the channel mask is a constant, so channel-contiguous loads and stores can be vectorised."""
    pid = tl.program_id(0)
    n_dblk = tl.cdiv(E, BLOCK_D)
    b = (pid // n_dblk).to(tl.int64)
    offs_d = (pid % n_dblk) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = tl.full((BLOCK_D,), True, tl.int1) if EVEN_D else offs_d < E
    return b, tl.program_id(1), offs_d, mask_d, tl.arange(0, BLOCK_N)


@triton.jit
def _direction_params(bias_ptr, a_ptr, d_ptr, k, E, N, offs_d, mask_d, offs_n,
                      HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr):
    """This program's slice of the per-direction parameters: bias·log2(e) (D), A (N, D), D (D)."""
    mask_nd = (offs_n < N)[:, None] & mask_d[None, :]
    A = tl.load(a_ptr + (k * E + offs_d[None, :]) * N + offs_n[:, None], mask=mask_nd, other=0.0).to(tl.float32)
    bias2 = tl.zeros(offs_d.shape, dtype=tl.float32)  # in base 2, like the pre-activation it is added to
    if HAS_BIAS:
        bias2 = tl.load(bias_ptr + k * E + offs_d, mask=mask_d, other=0.0).to(tl.float32) * LOG2E
    Dk = tl.zeros(offs_d.shape, dtype=tl.float32)
    if HAS_D:
        Dk = tl.load(d_ptr + k * E + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    return A, bias2, Dk


@triton.jit
def _over_states(t, KEEP_LAYOUT: tl.constexpr):
    """(BLOCK_L, BLOCK_D) -> (BLOCK_L, 1, BLOCK_D), to broadcast against the states. KEEP_LAYOUT: through a reshape,
    which keeps t's register layout (as loaded) for the 3-D scan; t[:, None, :] lets the compiler pick its default
    3-D layout, channels across the lanes and positions along each thread. The default suits tiles loaded
    channel-contiguous (the SS2D maps); for tiles loaded position-contiguous (the plain geometry at N = 1) it moved
    every tile through shared memory and scanned across warps (SASS: 736 vs 496 instructions)."""
    if KEEP_LAYOUT:
        return tl.reshape(t, (t.shape[0], 1, t.shape[1]))
    else:
        return t[:, None, :]


@triton.jit
def _state_offsets(b, k, c, offs_n, offs_d, K: tl.constexpr, E, N: tl.constexpr, NC):
    """(BLOCK_N, BLOCK_D) offsets of chunk (or run) c's state in a (B, K, NC, N, E) fp32 tensor: channel-contiguous,
    so a program's state loads and stores are coalesced."""
    return (((b * K + k) * NC + c) * N + offs_n[:, None]) * E + offs_d[None, :]


_SHAPE_ARGS = ["E", "H", "W", "L", "NCHUNK"]  # one compiled kernel serves every stage / image size


@triton.jit(do_not_specialize=_SHAPE_ARGS + ["CPP", "NPROG", "NSTATE"])
def _scan_fwd_kernel(
    u_ptr, dl_ptr, w_ptr, bias_ptr, a_ptr, d_ptr, b_ptr, c_ptr, y_ptr, st_ptr, logp_ptr, send_ptr, so_ptr,
    E, H, W, L, NCHUNK, R: tl.constexpr, CPP, NPROG, NSTATE,
    su_b, su_k, su_d, su_h, su_w,
    sdl_b, sdl_k, sdl_c, sdl_h, sdl_w,
    sb_b, sb_k, sb_n, sb_h, sb_w,
    sc_b, sc_k, sc_n, sc_h, sc_w,
    sy_b, sy_k, sy_d, sy_h, sy_w,
    K: tl.constexpr, N: tl.constexpr, DT_PROJ: tl.constexpr, ORDER: tl.constexpr, FLAT: tl.constexpr,
    MERGE: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, FAST_MATH: tl.constexpr,
    LOAD_STATE: tl.constexpr, SUMMARY: tl.constexpr, STORE_Y: tl.constexpr,
    STORE_STATES: tl.constexpr, STATE_EVERY: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, NUM_STAGES: tl.constexpr,
    EVEN_D: tl.constexpr, EVEN_L: tl.constexpr,
):
    """Program (batch x channel block, direction k, run p) scans chunks [p*CPP, (p+1)*CPP) of its sequence.

    With one run per sequence (NPROG == 1) that is the whole scan. With several, a first launch (SUMMARY) stores
    each run's total log2-decay and end state from a zero start, `_run_starts_kernel` chains them into each run's
    start state, and a second launch (LOAD_STATE) recomputes the runs from there: the sequential chain shrinks
    from NCHUNK chunks to CPP chunks plus a cheap pass over the runs.

    STORE_STATES (training): also writes the state at the start of every STATE_EVERY positions (the backward's
    chunk; BLOCK_L is a multiple of it) into so_ptr (B, K, NSTATE, N, E), so the backward needs no forward pass.
    """
    b, k, offs_d, mask_d, offs_n = _program(E, BLOCK_D, BLOCK_N, EVEN_D)
    run = tl.program_id(2)
    mask_n = offs_n < N
    mask_nd = mask_n[:, None] & mask_d[None, :]
    offs_l = tl.arange(0, BLOCK_L)
    column_major, reverse = _direction(k, ORDER)
    KEEP: tl.constexpr = FLAT and N == 1  # see _over_states
    A, bias2, Dk = _direction_params(bias_ptr, a_ptr, d_ptr, k, E, N, offs_d, mask_d, offs_n, HAS_BIAS, HAS_D)
    run_offs = _state_offsets(b, k, run, offs_n, offs_d, K, E, N, NPROG)
    if LOAD_STATE:
        h_carry = tl.load(st_ptr + run_offs, mask=mask_nd, other=0.0)
    else:
        h_carry = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    if STORE_STATES:
        SUB: tl.constexpr = BLOCK_L // STATE_EVERY  # backward chunks per forward chunk
        so_base = so_ptr + (b * K + k) * NSTATE * N * E
        so_nd = offs_n[:, None] * E + offs_d[None, :]
        tl.store(so_base + run * CPP * SUB * N * E + so_nd, h_carry, mask=mask_nd)
    log2_decay = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for c in tl.range(run * CPP, tl.minimum(run * CPP + CPP, NCHUNK), num_stages=NUM_STAGES):
        pos = c * BLOCK_L + offs_l
        mask_l = tl.full((BLOCK_L,), True, tl.int1) if EVEN_L else pos < L  # EVEN_L: 7-14% fewer instructions
        mask_ld = mask_l[:, None] & mask_d[None, :]
        mask_ln = mask_l[:, None] & mask_n[None, :]
        hh, ww = _pixels(pos, column_major, reverse, H, W, L, FLAT)
        u = tl.load(u_ptr + b * su_b + k * su_k + (hh * su_h + ww * su_w)[:, None] + offs_d[None, :] * su_d,
                    mask=mask_ld, other=0.0).to(tl.float32)
        z2 = _delta(dl_ptr, b * sdl_b + k * sdl_k, hh * sdl_h + ww * sdl_w, sdl_c, offs_d, mask_l, mask_d, w_ptr, k, E,
                    bias2, R, DT_PROJ)
        dt2, _ = _delta2(z2, SOFTPLUS, FAST_MATH)
        Bv = tl.load(b_ptr + b * sb_b + k * sb_k + (hh * sb_h + ww * sb_w)[:, None] + offs_n[None, :] * sb_n,
                     mask=mask_ln, other=0.0).to(tl.float32)
        dA2 = tl.where(mask_l[:, None, None], _over_states(dt2, KEEP) * A[None, :, :], 0.0)  # padding passes h on
        decay = _exp2(dA2, FAST_MATH)
        x = _over_states(dt2 * LN2 * u, KEEP) * Bv[:, :, None]
        decay_prod, h = tl.associative_scan((decay, x), axis=0, combine_fn=_combine)
        if SUMMARY:
            log2_decay += tl.sum(dA2, axis=0)
        h = h + decay_prod * h_carry[None, :, :]
        h_carry = tl.sum(tl.where((offs_l == BLOCK_L - 1)[:, None, None], h, 0.0), axis=0)
        if STORE_STATES:  # the state after each sub-chunk's last position starts the next sub-chunk
            nxt = pos // STATE_EVERY + 1
            ends = mask_l & (offs_l % STATE_EVERY == STATE_EVERY - 1) & (nxt < NSTATE)
            tl.store(so_base + (nxt * (N * E))[:, None, None] + so_nd[None, :, :], h,
                     mask=ends[:, None, None] & mask_nd[None, :, :])
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
        tl.store(logp_ptr + run_offs, log2_decay, mask=mask_nd)
        tl.store(send_ptr + run_offs, h_carry, mask=mask_nd)


@triton.jit(do_not_specialize=["E", "NPROG"])
def _run_starts_kernel(logp_ptr, send_ptr, st_ptr, E, NPROG, K: tl.constexpr, N: tl.constexpr,
                       BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr):
    """Start state of every run from the runs' (log2-decay, end state from zero): h <- 2^log2_decay h + end."""
    pid = tl.program_id(0)
    n_dblk = tl.cdiv(E, BLOCK_D)
    b = (pid // n_dblk).to(tl.int64)
    k = tl.program_id(1)
    offs_d = (pid % n_dblk) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    mask = (offs_n < N)[:, None] & (offs_d < E)[None, :]
    base = _state_offsets(b, k, 0, offs_n, offs_d, K, E, N, NPROG)
    h = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    for p in range(NPROG):
        at = base + p * N * E
        tl.store(st_ptr + at, h, mask=mask)
        h = tl.exp2(tl.load(logp_ptr + at, mask=mask, other=0.0)) * h + tl.load(send_ptr + at, mask=mask, other=0.0)


@triton.jit(do_not_specialize=_SHAPE_ARGS)
def _scan_bwd_kernel(
    u_ptr, z_ptr, w_ptr, bias_ptr, a_ptr, d_ptr, b_ptr, c_ptr, dy_ptr, st_ptr,
    du_ptr, dz_ptr, dbias_ptr, da_ptr, dd_ptr, db_ptr, dc_ptr,
    E, H, W, L, NCHUNK, R: tl.constexpr,
    su_b, su_k, su_d, su_h, su_w,
    sz_b, sz_k, sz_d, sz_h, sz_w,
    sb_b, sb_k, sb_n, sb_h, sb_w,
    sc_b, sc_k, sc_n, sc_h, sc_w,
    sy_b, sy_k, sy_d, sy_h, sy_w,
    sdu_b, sdu_k, sdu_d, sdu_h, sdu_w,
    sdz_b, sdz_k, sdz_d, sdz_h, sdz_w,
    sdb_b, sdb_k, sdb_n, sdb_h, sdb_w,
    sdc_b, sdc_k, sdc_n, sdc_h, sdc_w,
    K: tl.constexpr, N: tl.constexpr, DT_PROJ: tl.constexpr, ORDER: tl.constexpr, FLAT: tl.constexpr,
    MERGE: tl.constexpr,
    SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, FAST_MATH: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, NUM_STAGES: tl.constexpr,
    EVEN_D: tl.constexpr, EVEN_L: tl.constexpr,
):
    """Gradients of one (batch x channel block, direction k) sequence, chunks in reverse order. Δ comes from its
    pre-activation z, read as such or (DT_PROJ) projected in-kernel from dt_low as in the forward; dL/dz goes out
    per element for the launcher's GEMMs (dt_low, W_dt); dB, dC (summed over the channel block) and du (when
    merging) are atomic adds."""
    b, k, offs_d, mask_d, offs_n = _program(E, BLOCK_D, BLOCK_N, EVEN_D)
    mask_n = offs_n < N
    mask_nd = mask_n[:, None] & mask_d[None, :]
    offs_l = tl.arange(0, BLOCK_L)
    column_major, reverse = _direction(k, ORDER)
    KEEP: tl.constexpr = FLAT and N == 1  # see _over_states
    A, bias2, Dk = _direction_params(bias_ptr, a_ptr, d_ptr, k, E, N, offs_d, mask_d, offs_n, HAS_BIAS, HAS_D)
    g_carry = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)  # a_t g_t at the next chunk's first position
    acc_a = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
    acc_d = tl.zeros((BLOCK_D,), dtype=tl.float32)
    acc_bias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    base_u = b * su_b + k * su_k
    for ci in tl.range(0, NCHUNK, num_stages=NUM_STAGES):
        c = NCHUNK - 1 - ci
        pos = c * BLOCK_L + offs_l
        mask_l = tl.full((BLOCK_L,), True, tl.int1) if EVEN_L else pos < L  # EVEN_L: 7-14% fewer instructions
        mask_ld = mask_l[:, None] & mask_d[None, :]
        mask_ln = mask_l[:, None] & mask_n[None, :]
        hh, ww = _pixels(pos, column_major, reverse, H, W, L, FLAT)
        u = tl.load(u_ptr + base_u + (hh * su_h + ww * su_w)[:, None] + offs_d[None, :] * su_d, mask=mask_ld, other=0.0).to(tl.float32)
        z2 = _delta(z_ptr, b * sz_b + k * sz_k, hh * sz_h + ww * sz_w, sz_d, offs_d, mask_l, mask_d, w_ptr, k, E,
                    bias2, R, DT_PROJ)
        dt2, e = _delta2(z2, SOFTPLUS, FAST_MATH)
        dt = dt2 * LN2
        Bv = tl.load(b_ptr + b * sb_b + k * sb_k + (hh * sb_h + ww * sb_w)[:, None] + offs_n[None, :] * sb_n, mask=mask_ln, other=0.0).to(tl.float32)
        Cv = tl.load(c_ptr + b * sc_b + k * sc_k + (hh * sc_h + ww * sc_w)[:, None] + offs_n[None, :] * sc_n, mask=mask_ln, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + b * sy_b + k * sy_k + (hh * sy_h + ww * sy_w)[:, None] + offs_d[None, :] * sy_d, mask=mask_ld, other=0.0).to(tl.float32)
        # states inside the chunk, from the chunk-start state
        decay = tl.where(mask_l[:, None, None], _exp2(_over_states(dt2, KEEP) * A[None, :, :], FAST_MATH), 1.0)
        x = _over_states(dt * u, KEEP) * Bv[:, :, None]
        decay_prod, h = tl.associative_scan((decay, x), axis=0, combine_fn=_combine)
        h0 = tl.load(st_ptr + _state_offsets(b, k, c, offs_n, offs_d, K, E, N, NCHUNK), mask=mask_nd, other=0.0)
        h = h + decay_prod * h0[None, :, :]
        # adjoint: g_t = C_t dy_t + a_{t+1} g_{t+1}, g past the end 0; the chunk after contributes
        # a_{end+1} g_{end+1} (carried), weighted by prod a_{t+1..end}
        beta = Cv[:, :, None] * _over_states(dy, KEEP)
        _, prod_rev, g = tl.associative_scan((decay, tl.full(decay.shape, 1.0, tl.float32), beta), axis=0,
                                             combine_fn=_combine_shifted, reverse=True)
        g = g + prod_rev * g_carry[None, :, :]
        g_carry = tl.sum(tl.where((offs_l == 0)[:, None, None], decay * g, 0.0), axis=0)
        g = tl.where(mask_l[:, None, None], g, 0.0)
        d_log_decay = g * (h - x)  # a_t h_{t-1} = h_t - x_t
        gB = tl.sum(g * Bv[:, :, None], axis=1)  # (L, D)
        d_dt = tl.sum(d_log_decay * A[None, :, :], axis=1) + gB * u
        du = gB * dt
        if HAS_D:
            du += Dk[None, :] * dy
            acc_d += tl.sum(dy * u, axis=0)
        acc_a += tl.sum(d_log_decay * _over_states(dt, KEEP), axis=0)
        db_part = tl.sum(g * _over_states(dt * u, KEEP), axis=2)  # (L, N): this channel block's share
        dc_part = tl.sum(h * _over_states(dy, KEEP), axis=2)
        tl.atomic_add(db_ptr + b * sdb_b + k * sdb_k + (hh * sdb_h + ww * sdb_w)[:, None] + offs_n[None, :] * sdb_n, db_part, mask=mask_ln, sem="relaxed")
        tl.atomic_add(dc_ptr + b * sdc_b + k * sdc_k + (hh * sdc_h + ww * sdc_w)[:, None] + offs_n[None, :] * sdc_n, dc_part, mask=mask_ln, sem="relaxed")
        if SOFTPLUS:  # softplus' = sigmoid(z) = e^z / (1 + e^z)
            d_dt = tl.where(z2 > 20.0 * LOG2E, d_dt, d_dt * tl.fdiv(e, 1.0 + e))
        d_dt = tl.where(mask_ld, d_dt, 0.0)
        acc_bias += tl.sum(d_dt, axis=0)
        tl.store(dz_ptr + b * sdz_b + k * sdz_k + (hh * sdz_h + ww * sdz_w)[:, None] + offs_d[None, :] * sdz_d,
                 d_dt.to(dz_ptr.dtype.element_ty), mask=mask_ld)
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
