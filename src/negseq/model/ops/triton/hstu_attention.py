"""Triton jagged HSTU attention, forward and backward (the GPU kernel of DESIGN §6).

Same math and mask as the PyTorch reference (`negseq.model.ops.pytorch.hstu_attention`):
`A = SiLU(alpha q k^T) / N`, causal with the diagonal, optional `max_attn_len` window and
`contextual_seq_len` prefix; `out = A v`. Inputs stay jagged (`[L, H, D]` with `offsets`);
no padded copy is built. One program handles one (sequence, head, row block); sequences
are visited longest first and, within a sequence, the heaviest (last) row blocks first, so
the tail of the launch is made of short programs.

The forward keeps only the output (no softmax statistics exist in HSTU); the backward
recomputes the scores twice, once per key block for dK/dV and once per query block for dQ,
so nothing is accumulated atomically and the result is deterministic.

The kernels are torch.library custom ops (`negseq::hstu_attention_fwd` / `_bwd`) so
torch.compile and torch.export treat them as opaque nodes; `TritonHSTUAttention` is the
autograd.Function that ties them together. The dispatcher
(`negseq.model.ops.hstu_attention(..., kernel=Kernel.TRITON)`) imports this module on first use.

On CPU the kernels run only under the Triton interpreter (`TRITON_INTERPRET=1` set before
this module is imported), with one fixed small block size instead of autotuning.
Environment switches (read at import): NEGSEQ_TRITON_AUTOTUNE=0 launches the first config
of each set instead of autotuning; NEGSEQ_TRITON_FAST_MATH=0 uses exp and a division for
the sigmoid instead of tanh.approx (about 1.45x slower fwd+bwd on an H200).
"""

from __future__ import annotations

import os

import torch

from negseq.errors import NegseqError

try:
    import triton
    import triton.language as tl
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "kernel='triton' needs the triton package (install negseq[gpu]); use kernel='pytorch' without it"
    ) from exc

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"
"""Whether the kernels below were built for the Triton interpreter (read at import)."""

_INTERPRETER_BLOCK = 32  # block size used on CPU, where autotuning means nothing
# tanh.approx for the sigmoid on the GPU at 16-bit inputs (its ~2^-11 error is below
# bf16/fp16 rounding); NEGSEQ_TRITON_FAST_MATH=0 falls back to exp and a division.
_FAST_MATH = not INTERPRETING and os.environ.get("NEGSEQ_TRITON_FAST_MATH", "1") != "0"


@triton.jit
def _sigmoid_silu(qk, alpha, FAST_MATH: tl.constexpr):
    """(sigmoid(s), silu(s)) of s = alpha * qk.

    FAST_MATH: one tanh.approx (sigmoid(s) = (1 + tanh(s / 2)) / 2) instead of exp and a
    division; with h = s / 2, silu(s) = h + h * tanh(h) is one multiply-add.
    """
    if FAST_MATH:
        h = qk * (0.5 * alpha)
        t = tl.inline_asm_elementwise(
            "tanh.approx.f32 $0, $1;", "=r,r", [h], dtype=tl.float32, is_pure=True, pack=1
        )
        sig = 0.5 + 0.5 * t
        silu = h + h * t
    else:
        s = qk * alpha
        sig = 1.0 / (1.0 + tl.exp(-s))
        silu = s * sig
    return sig, silu


@triton.jit
def _valid(
    q_pos,
    k_pos,
    seq_len,
    max_attn_len,
    contextual_seq_len,
    MASK: tl.constexpr,
    HAS_MAX_ATTN_LEN: tl.constexpr,
    HAS_CONTEXTUAL: tl.constexpr,
):
    """Whether query position q_pos may see key position k_pos (broadcast shapes).

    MASK 1: plain causal (tile lies inside the sequence); MASK 2: the reference's full
    rule (`valid_attention_mask`), including positions past the sequence end.
    """
    if MASK == 1:
        valid = q_pos >= k_pos
    else:
        if HAS_CONTEXTUAL:
            row_ids = tl.maximum(q_pos - contextual_seq_len + 1, 0)
            col_ids = tl.maximum(k_pos - contextual_seq_len + 1, 0)
        else:
            row_ids = q_pos
            col_ids = k_pos
        dist = row_ids - col_ids
        valid = (q_pos == k_pos) | (dist > 0)
        if HAS_MAX_ATTN_LEN:
            valid = valid & (dist <= max_attn_len)
        if HAS_CONTEXTUAL:
            max_ids = seq_len - contextual_seq_len + 1
            valid = valid | ((row_ids == 0) & (col_ids < max_ids))
        valid = valid & (q_pos < seq_len) & (k_pos < seq_len)
    return valid


@triton.jit
def _load_rows(base, rows, cols, stride_row, n_rows, D: tl.constexpr, BLOCK_D: tl.constexpr):
    """Tile [rows, cols] of a jagged [L, H, D] slice; zero past the sequence end / head dim."""
    mask = rows[:, None] < n_rows
    if BLOCK_D != D:
        mask = mask & (cols[None, :] < D)
    return tl.load(base + rows[:, None] * stride_row + cols[None, :], mask=mask, other=0.0)


@triton.jit
def _store_rows(base, value, rows, cols, stride_row, n_rows, D: tl.constexpr, BLOCK_D: tl.constexpr):
    mask = rows[:, None] < n_rows
    if BLOCK_D != D:
        mask = mask & (cols[None, :] < D)
    tl.store(base + rows[:, None] * stride_row + cols[None, :], value, mask=mask)


@triton.jit
def _key_range(
    start_m,
    seq_len,
    max_attn_len,
    contextual_seq_len,
    HAS_MAX_ATTN_LEN: tl.constexpr,
    HAS_CONTEXTUAL: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """[lo, hi) of key positions that rows [start_m, start_m + BLOCK_M) may see."""
    hi = tl.minimum(start_m + BLOCK_M, seq_len)
    lo = start_m * 0
    if HAS_CONTEXTUAL:
        # contextual rows (ids 0) see the whole sequence
        hi = tl.where(start_m < contextual_seq_len, seq_len, hi)
    if HAS_MAX_ATTN_LEN:
        lo = tl.maximum(start_m - max_attn_len, 0)
        if HAS_CONTEXTUAL:
            # contextual keys (id 0) stay visible while a row's id is within the window
            lo = tl.where(lo < contextual_seq_len, 0, lo)
        lo = (lo // BLOCK_N) * BLOCK_N
    return lo, hi


@triton.jit
def _seq_and_head(offsets, order, H):
    """(start row, length, head) of this program: sequences in `order` (longest first)."""
    pid_bh = tl.program_id(1)
    seq = tl.load(order + pid_bh // H)
    head = pid_bh % H
    start = tl.load(offsets + seq)
    seq_len = (tl.load(offsets + seq + 1) - start).to(tl.int32)
    return start, seq_len, head


@triton.jit
def _query_block_step(
    acc,
    q,
    do,
    k_base,
    v_base,
    offs_m,
    start_n,
    seq_len,
    stride_kl,
    stride_vl,
    alpha,
    max_attn_len,
    contextual_seq_len,
    MASK: tl.constexpr,
    HAS_MAX_ATTN_LEN: tl.constexpr,
    HAS_CONTEXTUAL: tl.constexpr,
    FAST_MATH: tl.constexpr,
    GRAD: tl.constexpr,
    D_QK: tl.constexpr,
    D_V: tl.constexpr,
    BLOCK_D_QK: tl.constexpr,
    BLOCK_D_V: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """Add one key block's share to a query block: the output `A v` (forward), or with GRAD
    dQ's `dS k`, where dS = (dO v^T) * silu'(s). `do` is read only with GRAD."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = _load_rows(k_base, offs_n, tl.arange(0, BLOCK_D_QK), stride_kl, seq_len, D_QK, BLOCK_D_QK)
    v = _load_rows(v_base, offs_n, tl.arange(0, BLOCK_D_V), stride_vl, seq_len, D_V, BLOCK_D_V)
    sig, a = _sigmoid_silu(tl.dot(q, tl.trans(k)), alpha, FAST_MATH)
    if GRAD:
        p = tl.dot(do, tl.trans(v)) * (sig + a * (1.0 - sig))
        rhs = k
    else:
        p = a
        rhs = v
    if MASK > 0:
        valid = _valid(
            offs_m[:, None],
            offs_n[None, :],
            seq_len,
            max_attn_len,
            contextual_seq_len,
            MASK,
            HAS_MAX_ATTN_LEN,
            HAS_CONTEXTUAL,
        )
        p = tl.where(valid, p, 0.0)
    return tl.dot(p.to(rhs.dtype), rhs, acc)


@triton.jit
def _query_block_loop(
    acc,
    q,
    do,
    k_base,
    v_base,
    offs_m,
    start_m,
    seq_len,
    stride_kl,
    stride_vl,
    alpha,
    max_attn_len,
    contextual_seq_len,
    HAS_MAX_ATTN_LEN: tl.constexpr,
    HAS_CONTEXTUAL: tl.constexpr,
    FAST_MATH: tl.constexpr,
    GRAD: tl.constexpr,
    D_QK: tl.constexpr,
    D_V: tl.constexpr,
    BLOCK_D_QK: tl.constexpr,
    BLOCK_D_V: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """`_query_block_step` over every key block the query block sees (forward and dQ).

    With a window or a contextual prefix every tile takes the full mask rule; otherwise the
    keys strictly before the block need no mask and the diagonal block the causal one.
    """
    if HAS_MAX_ATTN_LEN or HAS_CONTEXTUAL:
        lo, hi = _key_range(
            start_m,
            seq_len,
            max_attn_len,
            contextual_seq_len,
            HAS_MAX_ATTN_LEN,
            HAS_CONTEXTUAL,
            BLOCK_M,
            BLOCK_N,
        )
        for start_n in range(lo, hi, BLOCK_N):
            acc = _query_block_step(
                acc,
                q,
                do,
                k_base,
                v_base,
                offs_m,
                start_n,
                seq_len,
                stride_kl,
                stride_vl,
                alpha,
                max_attn_len,
                contextual_seq_len,
                2,
                HAS_MAX_ATTN_LEN,
                HAS_CONTEXTUAL,
                FAST_MATH,
                GRAD,
                D_QK,
                D_V,
                BLOCK_D_QK,
                BLOCK_D_V,
                BLOCK_N,
            )
    else:
        for start_n in range(0, start_m, BLOCK_N):
            acc = _query_block_step(
                acc,
                q,
                do,
                k_base,
                v_base,
                offs_m,
                start_n,
                seq_len,
                stride_kl,
                stride_vl,
                alpha,
                max_attn_len,
                contextual_seq_len,
                0,
                False,
                False,
                FAST_MATH,
                GRAD,
                D_QK,
                D_V,
                BLOCK_D_QK,
                BLOCK_D_V,
                BLOCK_N,
            )
        for start_n in range(start_m, tl.minimum(start_m + BLOCK_M, seq_len), BLOCK_N):
            acc = _query_block_step(
                acc,
                q,
                do,
                k_base,
                v_base,
                offs_m,
                start_n,
                seq_len,
                stride_kl,
                stride_vl,
                alpha,
                max_attn_len,
                contextual_seq_len,
                1,
                False,
                False,
                FAST_MATH,
                GRAD,
                D_QK,
                D_V,
                BLOCK_D_QK,
                BLOCK_D_V,
                BLOCK_N,
            )
    return acc


@triton.jit
def _hstu_fwd_kernel(
    Q,
    K,
    V,
    Out,
    offsets,
    order,
    stride_ql,
    stride_qh,
    stride_kl,
    stride_kh,
    stride_vl,
    stride_vh,
    stride_ol,
    stride_oh,
    alpha,
    inv_n,
    max_attn_len,
    contextual_seq_len,
    H,
    AUTOTUNE_MAX_LEN,  # autotuning key only
    D_QK: tl.constexpr,
    D_V: tl.constexpr,
    BLOCK_D_QK: tl.constexpr,
    BLOCK_D_V: tl.constexpr,
    HAS_MAX_ATTN_LEN: tl.constexpr,
    HAS_CONTEXTUAL: tl.constexpr,
    FAST_MATH: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    start, seq_len, head = _seq_and_head(offsets, order, H)
    start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M  # heaviest block first
    if start_m >= seq_len:
        return
    offs_m = start_m + tl.arange(0, BLOCK_M)
    q = _load_rows(
        Q + start * stride_ql + head * stride_qh,
        offs_m,
        tl.arange(0, BLOCK_D_QK),
        stride_ql,
        seq_len,
        D_QK,
        BLOCK_D_QK,
    )
    # q stands in for dO, which the forward does not read
    acc = _query_block_loop(
        tl.zeros([BLOCK_M, BLOCK_D_V], dtype=tl.float32),
        q,
        q,
        K + start * stride_kl + head * stride_kh,
        V + start * stride_vl + head * stride_vh,
        offs_m,
        start_m,
        seq_len,
        stride_kl,
        stride_vl,
        alpha,
        max_attn_len,
        contextual_seq_len,
        HAS_MAX_ATTN_LEN,
        HAS_CONTEXTUAL,
        FAST_MATH,
        False,
        D_QK,
        D_V,
        BLOCK_D_QK,
        BLOCK_D_V,
        BLOCK_M,
        BLOCK_N,
    )
    acc = acc * inv_n
    _store_rows(
        Out + start * stride_ol + head * stride_oh,
        acc.to(Out.dtype.element_ty),
        offs_m,
        tl.arange(0, BLOCK_D_V),
        stride_ol,
        seq_len,
        D_V,
        BLOCK_D_V,
    )


@triton.jit
def _dkdv_step(
    dk,
    dv,
    k,
    v,
    q_base,
    do_base,
    offs_n,
    start_m,
    seq_len,
    stride_ql,
    stride_dol,
    alpha,
    max_attn_len,
    contextual_seq_len,
    MASK: tl.constexpr,
    HAS_MAX_ATTN_LEN: tl.constexpr,
    HAS_CONTEXTUAL: tl.constexpr,
    FAST_MATH: tl.constexpr,
    D_QK: tl.constexpr,
    D_V: tl.constexpr,
    BLOCK_D_QK: tl.constexpr,
    BLOCK_D_V: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """Add one query block's share to dK, dV of a key block (tiles are key-major, [N, M])."""
    offs_m = start_m + tl.arange(0, BLOCK_M)
    q = _load_rows(q_base, offs_m, tl.arange(0, BLOCK_D_QK), stride_ql, seq_len, D_QK, BLOCK_D_QK)
    do = _load_rows(do_base, offs_m, tl.arange(0, BLOCK_D_V), stride_dol, seq_len, D_V, BLOCK_D_V)
    sig, a_t = _sigmoid_silu(tl.dot(k, tl.trans(q)), alpha, FAST_MATH)
    dp_t = tl.dot(v, tl.trans(do))
    ds_t = dp_t * (sig + a_t * (1.0 - sig))  # d silu(s) / ds
    if MASK > 0:
        valid = _valid(
            offs_m[None, :],
            offs_n[:, None],
            seq_len,
            max_attn_len,
            contextual_seq_len,
            MASK,
            HAS_MAX_ATTN_LEN,
            HAS_CONTEXTUAL,
        )
        a_t = tl.where(valid, a_t, 0.0)
        ds_t = tl.where(valid, ds_t, 0.0)
    dv = tl.dot(a_t.to(do.dtype), do, dv)
    dk = tl.dot(ds_t.to(q.dtype), q, dk)
    return dk, dv


@triton.jit
def _hstu_bwd_dkdv_kernel(
    Q,
    K,
    V,
    DO,
    DK,
    DV,
    offsets,
    order,
    stride_ql,
    stride_qh,
    stride_kl,
    stride_kh,
    stride_vl,
    stride_vh,
    stride_dol,
    stride_doh,
    stride_dkl,
    stride_dkh,
    stride_dvl,
    stride_dvh,
    alpha,
    inv_n,
    max_attn_len,
    contextual_seq_len,
    H,
    AUTOTUNE_MAX_LEN,
    D_QK: tl.constexpr,
    D_V: tl.constexpr,
    BLOCK_D_QK: tl.constexpr,
    BLOCK_D_V: tl.constexpr,
    HAS_MAX_ATTN_LEN: tl.constexpr,
    HAS_CONTEXTUAL: tl.constexpr,
    FAST_MATH: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One program per (sequence, head, key block of BLOCK_N); loops over query blocks."""
    start, seq_len, head = _seq_and_head(offsets, order, H)
    start_n = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_N
    if start_n >= seq_len:
        return
    offs_n = start_n + tl.arange(0, BLOCK_N)
    k = _load_rows(
        K + start * stride_kl + head * stride_kh,
        offs_n,
        tl.arange(0, BLOCK_D_QK),
        stride_kl,
        seq_len,
        D_QK,
        BLOCK_D_QK,
    )
    v = _load_rows(
        V + start * stride_vl + head * stride_vh,
        offs_n,
        tl.arange(0, BLOCK_D_V),
        stride_vl,
        seq_len,
        D_V,
        BLOCK_D_V,
    )
    q_base = Q + start * stride_ql + head * stride_qh
    do_base = DO + start * stride_dol + head * stride_doh
    dk = tl.zeros([BLOCK_N, BLOCK_D_QK], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D_V], dtype=tl.float32)
    if HAS_MAX_ATTN_LEN or HAS_CONTEXTUAL:
        lo_m = start_n  # BLOCK_N is a multiple of BLOCK_M
        hi_m = seq_len
        if HAS_MAX_ATTN_LEN:
            # the last row that sees a key in this block (contextual keys have id 0)
            hi_m = tl.minimum(seq_len, tl.maximum(start_n + BLOCK_N, contextual_seq_len) + max_attn_len)
        if HAS_CONTEXTUAL:
            # contextual rows see every key; visit those that lie before lo_m
            for start_m in range(0, tl.minimum(lo_m, contextual_seq_len), BLOCK_M):
                dk, dv = _dkdv_step(
                    dk,
                    dv,
                    k,
                    v,
                    q_base,
                    do_base,
                    offs_n,
                    start_m,
                    seq_len,
                    stride_ql,
                    stride_dol,
                    alpha,
                    max_attn_len,
                    contextual_seq_len,
                    2,
                    HAS_MAX_ATTN_LEN,
                    HAS_CONTEXTUAL,
                    FAST_MATH,
                    D_QK,
                    D_V,
                    BLOCK_D_QK,
                    BLOCK_D_V,
                    BLOCK_M,
                )
        for start_m in range(lo_m, hi_m, BLOCK_M):
            dk, dv = _dkdv_step(
                dk,
                dv,
                k,
                v,
                q_base,
                do_base,
                offs_n,
                start_m,
                seq_len,
                stride_ql,
                stride_dol,
                alpha,
                max_attn_len,
                contextual_seq_len,
                2,
                HAS_MAX_ATTN_LEN,
                HAS_CONTEXTUAL,
                FAST_MATH,
                D_QK,
                D_V,
                BLOCK_D_QK,
                BLOCK_D_V,
                BLOCK_M,
            )
    else:
        for start_m in range(start_n, tl.minimum(start_n + BLOCK_N, seq_len), BLOCK_M):
            dk, dv = _dkdv_step(
                dk,
                dv,
                k,
                v,
                q_base,
                do_base,
                offs_n,
                start_m,
                seq_len,
                stride_ql,
                stride_dol,
                alpha,
                max_attn_len,
                contextual_seq_len,
                1,
                False,
                False,
                FAST_MATH,
                D_QK,
                D_V,
                BLOCK_D_QK,
                BLOCK_D_V,
                BLOCK_M,
            )
        for start_m in range(start_n + BLOCK_N, seq_len, BLOCK_M):
            dk, dv = _dkdv_step(
                dk,
                dv,
                k,
                v,
                q_base,
                do_base,
                offs_n,
                start_m,
                seq_len,
                stride_ql,
                stride_dol,
                alpha,
                max_attn_len,
                contextual_seq_len,
                0,
                False,
                False,
                FAST_MATH,
                D_QK,
                D_V,
                BLOCK_D_QK,
                BLOCK_D_V,
                BLOCK_M,
            )
    dk = dk * (alpha * inv_n)
    dv = dv * inv_n
    _store_rows(
        DK + start * stride_dkl + head * stride_dkh,
        dk.to(DK.dtype.element_ty),
        offs_n,
        tl.arange(0, BLOCK_D_QK),
        stride_dkl,
        seq_len,
        D_QK,
        BLOCK_D_QK,
    )
    _store_rows(
        DV + start * stride_dvl + head * stride_dvh,
        dv.to(DV.dtype.element_ty),
        offs_n,
        tl.arange(0, BLOCK_D_V),
        stride_dvl,
        seq_len,
        D_V,
        BLOCK_D_V,
    )


@triton.jit
def _hstu_bwd_dq_kernel(
    Q,
    K,
    V,
    DO,
    DQ,
    offsets,
    order,
    stride_ql,
    stride_qh,
    stride_kl,
    stride_kh,
    stride_vl,
    stride_vh,
    stride_dol,
    stride_doh,
    stride_dql,
    stride_dqh,
    alpha,
    inv_n,
    max_attn_len,
    contextual_seq_len,
    H,
    AUTOTUNE_MAX_LEN,
    D_QK: tl.constexpr,
    D_V: tl.constexpr,
    BLOCK_D_QK: tl.constexpr,
    BLOCK_D_V: tl.constexpr,
    HAS_MAX_ATTN_LEN: tl.constexpr,
    HAS_CONTEXTUAL: tl.constexpr,
    FAST_MATH: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """One program per (sequence, head, query block); same key loop as the forward."""
    start, seq_len, head = _seq_and_head(offsets, order, H)
    start_m = (tl.num_programs(0) - 1 - tl.program_id(0)) * BLOCK_M
    if start_m >= seq_len:
        return
    offs_m = start_m + tl.arange(0, BLOCK_M)
    q = _load_rows(
        Q + start * stride_ql + head * stride_qh,
        offs_m,
        tl.arange(0, BLOCK_D_QK),
        stride_ql,
        seq_len,
        D_QK,
        BLOCK_D_QK,
    )
    do = _load_rows(
        DO + start * stride_dol + head * stride_doh,
        offs_m,
        tl.arange(0, BLOCK_D_V),
        stride_dol,
        seq_len,
        D_V,
        BLOCK_D_V,
    )
    dq = _query_block_loop(
        tl.zeros([BLOCK_M, BLOCK_D_QK], dtype=tl.float32),
        q,
        do,
        K + start * stride_kl + head * stride_kh,
        V + start * stride_vl + head * stride_vh,
        offs_m,
        start_m,
        seq_len,
        stride_kl,
        stride_vl,
        alpha,
        max_attn_len,
        contextual_seq_len,
        HAS_MAX_ATTN_LEN,
        HAS_CONTEXTUAL,
        FAST_MATH,
        True,
        D_QK,
        D_V,
        BLOCK_D_QK,
        BLOCK_D_V,
        BLOCK_M,
        BLOCK_N,
    )
    dq = dq * (alpha * inv_n)
    _store_rows(
        DQ + start * stride_dql + head * stride_dqh,
        dq.to(DQ.dtype.element_ty),
        offs_m,
        tl.arange(0, BLOCK_D_QK),
        stride_dql,
        seq_len,
        D_QK,
        BLOCK_D_QK,
    )


def _configs(pairs: list[tuple[int, int, int, int]]) -> list[triton.Config]:
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in pairs]


_AUTOTUNE_KEY = ["AUTOTUNE_MAX_LEN", "D_QK", "D_V", "HAS_MAX_ATTN_LEN", "HAS_CONTEXTUAL"]
# Small config sets (BLOCK_M, BLOCK_N, warps, stages), the first of each the default when
# autotuning is off. The forward and dQ step along keys inside a query block (BLOCK_M a
# multiple of BLOCK_N); dK/dV step along queries inside a key block (BLOCK_N a multiple of
# BLOCK_M). Chosen so that at D=128 on sm_90 ptxas keeps them (nearly) free of spills.
_FWD_CONFIGS = _configs([(128, 128, 8, 2), (128, 128, 8, 3), (128, 64, 8, 2), (64, 64, 4, 3)])
_DKDV_CONFIGS = _configs([(32, 64, 8, 2), (32, 64, 8, 3), (64, 64, 8, 2), (64, 128, 8, 2)])
_DQ_CONFIGS = _configs([(64, 64, 8, 2), (64, 32, 8, 3), (64, 32, 4, 3), (128, 64, 8, 2)])
_fwd_tuned = triton.autotune(_FWD_CONFIGS, key=_AUTOTUNE_KEY)(_hstu_fwd_kernel)
_dkdv_tuned = triton.autotune(_DKDV_CONFIGS, key=_AUTOTUNE_KEY)(_hstu_bwd_dkdv_kernel)
_dq_tuned = triton.autotune(_DQ_CONFIGS, key=_AUTOTUNE_KEY)(_hstu_bwd_dq_kernel)

AUTOTUNE = os.environ.get("NEGSEQ_TRITON_AUTOTUNE", "1") != "0"
"""Autotune block sizes per (length bucket, head dims, mask variant); off: first config."""


def _select(tuned, raw, configs: list[triton.Config]):
    """The kernel to launch and the launch options it needs beyond the arguments."""
    if INTERPRETING:
        return raw, {"BLOCK_M": _INTERPRETER_BLOCK, "BLOCK_N": _INTERPRETER_BLOCK}
    if not AUTOTUNE:
        default = configs[0]
        return raw, {**default.kwargs, "num_warps": default.num_warps, "num_stages": default.num_stages}
    return tuned, {}


def _common_args(
    q: torch.Tensor, v: torch.Tensor, max_len: int, max_attn_len: int, contextual_seq_len: int
) -> dict:
    d_qk, d_v = q.shape[2], v.shape[2]
    return {
        "AUTOTUNE_MAX_LEN": triton.next_power_of_2(max_len),
        "D_QK": d_qk,
        "D_V": d_v,
        "BLOCK_D_QK": max(16, triton.next_power_of_2(d_qk)),
        "BLOCK_D_V": max(16, triton.next_power_of_2(d_v)),
        "HAS_MAX_ATTN_LEN": max_attn_len > 0,
        "HAS_CONTEXTUAL": contextual_seq_len > 0,
        "FAST_MATH": _FAST_MATH and q.dtype != torch.float32,
    }


def _longest_first(offsets: torch.Tensor) -> torch.Tensor:
    lengths = offsets[1:] - offsets[:-1]
    return torch.argsort(lengths, descending=True, stable=True)


def _fwd(q, k, v, offsets, max_len, alpha, scaling_n, max_attn_len, contextual_seq_len):
    L, H, _ = q.shape
    out = torch.empty((L, H, v.shape[2]), dtype=v.dtype, device=v.device)
    batch = offsets.numel() - 1
    if L == 0 or batch == 0 or max_len == 0:
        return out.zero_()
    kernel, fixed = _select(_fwd_tuned, _hstu_fwd_kernel, _FWD_CONFIGS)
    grid = lambda meta: (triton.cdiv(max_len, meta["BLOCK_M"]), batch * H)  # noqa: E731
    kernel[grid](
        q,
        k,
        v,
        out,
        offsets,
        _longest_first(offsets),
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        out.stride(0),
        out.stride(1),
        alpha,
        1.0 / scaling_n,
        max_attn_len,
        contextual_seq_len,
        H,
        **_common_args(q, v, max_len, max_attn_len, contextual_seq_len),
        **fixed,
    )
    return out


def _bwd(grad_out, q, k, v, offsets, max_len, alpha, scaling_n, max_attn_len, contextual_seq_len):
    L, H, _ = q.shape
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    batch = offsets.numel() - 1
    if L == 0 or batch == 0 or max_len == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    order = _longest_first(offsets)
    common = _common_args(q, v, max_len, max_attn_len, contextual_seq_len)
    scalars = (alpha, 1.0 / scaling_n, max_attn_len, contextual_seq_len, H)
    in_strides = (
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        grad_out.stride(0),
        grad_out.stride(1),
    )

    kernel, fixed = _select(_dkdv_tuned, _hstu_bwd_dkdv_kernel, _DKDV_CONFIGS)
    grid = lambda meta: (triton.cdiv(max_len, meta["BLOCK_N"]), batch * H)  # noqa: E731
    kernel[grid](
        q,
        k,
        v,
        grad_out,
        dk,
        dv,
        offsets,
        order,
        *in_strides,
        dk.stride(0),
        dk.stride(1),
        dv.stride(0),
        dv.stride(1),
        *scalars,
        **common,
        **fixed,
    )
    kernel, fixed = _select(_dq_tuned, _hstu_bwd_dq_kernel, _DQ_CONFIGS)
    grid = lambda meta: (triton.cdiv(max_len, meta["BLOCK_M"]), batch * H)  # noqa: E731
    kernel[grid](
        q,
        k,
        v,
        grad_out,
        dq,
        offsets,
        order,
        *in_strides,
        dq.stride(0),
        dq.stride(1),
        *scalars,
        **common,
        **fixed,
    )
    return dq, dk, dv


@torch.library.custom_op("negseq::hstu_attention_fwd", mutates_args=())
def hstu_attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    offsets: torch.Tensor,
    max_len: int,
    alpha: float,
    scaling_n: int,
    max_attn_len: int,
    contextual_seq_len: int,
) -> torch.Tensor:
    """Triton forward: [L, H, Dv] output of jagged HSTU attention."""
    return _fwd(q, k, v, offsets, max_len, alpha, scaling_n, max_attn_len, contextual_seq_len)


@hstu_attention_fwd.register_fake
def _(q, k, v, offsets, max_len, alpha, scaling_n, max_attn_len, contextual_seq_len):
    return v.new_empty((q.shape[0], q.shape[1], v.shape[2]))


@torch.library.custom_op("negseq::hstu_attention_bwd", mutates_args=())
def hstu_attention_bwd(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    offsets: torch.Tensor,
    max_len: int,
    alpha: float,
    scaling_n: int,
    max_attn_len: int,
    contextual_seq_len: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton backward: (dq, dk, dv), recomputing the scores (nothing was saved but inputs)."""
    return _bwd(grad_out, q, k, v, offsets, max_len, alpha, scaling_n, max_attn_len, contextual_seq_len)


@hstu_attention_bwd.register_fake
def _(grad_out, q, k, v, offsets, max_len, alpha, scaling_n, max_attn_len, contextual_seq_len):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


class TritonHSTUAttention(torch.autograd.Function):
    """Differentiable jagged HSTU attention over the two custom ops."""

    @staticmethod
    def forward(ctx, q, k, v, offsets, max_len, alpha, scaling_n, max_attn_len, contextual_seq_len):
        ctx.save_for_backward(q, k, v, offsets)
        ctx.params = (max_len, alpha, scaling_n, max_attn_len, contextual_seq_len)
        return torch.ops.negseq.hstu_attention_fwd(q, k, v, offsets, *ctx.params)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, offsets = ctx.saved_tensors
        if grad_out.stride(-1) != 1:
            grad_out = grad_out.contiguous()
        dq, dk, dv = torch.ops.negseq.hstu_attention_bwd(grad_out, q, k, v, offsets, *ctx.params)
        return dq, dk, dv, None, None, None, None, None, None


def _check_inputs(q, k, v, offsets, max_len, scaling_n, max_attn_len, contextual_seq_len):
    """Shape/dtype/device checks that need no device sync (max_len itself is trusted)."""
    where = "triton hstu_attention"
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise NegseqError(
            f"{where}: q, k, v must be [L, H, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape != k.shape or v.shape[:2] != q.shape[:2]:
        raise NegseqError(
            f"{where}: q {tuple(q.shape)} and k {tuple(k.shape)} must match and "
            f"share [L, H] with v {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise NegseqError(
            f"{where}: q, k, v must share one of float16/bfloat16/float32; got "
            f"{q.dtype}, {k.dtype}, {v.dtype}"
        )
    if offsets.dim() != 1 or offsets.dtype != torch.int64 or offsets.numel() < 1:
        raise NegseqError(
            f"{where}: offsets must be a 1-D int64 tensor [B+1]; got {offsets.dtype} {tuple(offsets.shape)}"
        )
    devices = {t.device for t in (q, k, v, offsets)}
    if len(devices) != 1:
        raise NegseqError(f"{where}: q, k, v, offsets are on different devices {devices}")
    if q.device.type != "cuda" and not INTERPRETING:
        raise NegseqError(
            f"{where}: tensors on {q.device} need CUDA, or TRITON_INTERPRET=1 set "
            "before negseq.model.ops.triton.hstu_attention is imported"
        )
    if max_len < 0 or scaling_n <= 0 or max_attn_len < 0 or contextual_seq_len < 0:
        raise NegseqError(
            f"{where}: need max_len >= 0, scaling_n > 0, max_attn_len >= 0, "
            f"contextual_seq_len >= 0; got {max_len}, {scaling_n}, "
            f"{max_attn_len}, {contextual_seq_len}"
        )
    if offsets.device.type == "cpu" and offsets.numel() > 1 and not torch.compiler.is_compiling():
        lengths = offsets[1:] - offsets[:-1]
        if int(offsets[0]) != 0 or int(offsets[-1]) != q.shape[0] or bool((lengths < 0).any()):
            raise NegseqError(f"{where}: offsets must rise from 0 to L={q.shape[0]}")
        if int(lengths.max()) > max_len:
            raise NegseqError(
                f"{where}: max_len={max_len} is below the longest sequence ({int(lengths.max())})"
            )


def triton_hstu_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    offsets: torch.Tensor,
    max_len: int,
    *,
    alpha: float,
    scaling_n: int,
    max_attn_len: int = 0,
    contextual_seq_len: int = 0,
) -> torch.Tensor:
    """Jagged HSTU attention on the Triton kernels; same contract as `pytorch_hstu_attention`.

    `max_len` must be at least the longest sequence; it is checked only when offsets live
    on the CPU (on the GPU the check would cost a device sync on every call).
    """
    _check_inputs(q, k, v, offsets, max_len, scaling_n, max_attn_len, contextual_seq_len)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    return TritonHSTUAttention.apply(
        q,
        k,
        v,
        offsets,
        int(max_len),
        float(alpha),
        int(scaling_n),
        int(max_attn_len),
        int(contextual_seq_len),
    )
