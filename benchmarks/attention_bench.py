"""Jagged HSTU attention speed on a GPU: the Triton kernel against padded baselines.

Prints one JSON line per (shape, implementation) with median milliseconds and useful
TFLOP/s (causal FLOPs on the real lengths: fwd = H * D * 2 * sum(L_i^2); fwd+bwd = 3.5x),
then one summary line per shape with the Triton kernel's ratios to the baselines:
- `sdpa`: torch scaled_dot_product_attention(is_causal=True) on padded [B, H, N, D]
  (softmax attention, FlashAttention path);
- `eager`: the PyTorch reference core, `padded_hstu_attention` on padded [B, N, H, D]
  (SiLU(alpha q k^T) / N, masked, @ v; it builds its mask on every call).

    PYTHONPATH=src python3 benchmarks/attention_bench.py [--shapes 128x1024,32x4096,8x8192]
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
import torch.nn.functional as F

from negseq.model.jagged import torch_jagged_to_padded_dense
from negseq.model.ops import hstu_attention, padded_hstu_attention


def _median_ms(fn, reps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def _lengths(batch: int, max_len: int, gen: torch.Generator) -> torch.Tensor:
    low = int(0.9 * max_len)
    return torch.randint(low, max_len, (batch,), generator=gen)


def _jagged_to_padded(x: torch.Tensor, offsets: torch.Tensor, max_len: int) -> torch.Tensor:
    """[L, H, D] -> [B, N, H, D] (baselines only; the Triton kernel stays jagged)."""
    return torch_jagged_to_padded_dense(x, offsets, max_len)


def bench_shape(
    batch: int, max_len: int, heads: int, dim: int, reps: int, warmup: int, impls: list[str], seed: int = 0
) -> list[dict]:
    gen = torch.Generator().manual_seed(seed + batch * 100003 + max_len)
    lengths = _lengths(batch, max_len, gen).cuda()
    offsets = torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, 0)])
    total = int(offsets[-1])
    fwd_flops = heads * dim * 2 * float((lengths.double() ** 2).sum())
    alpha, dtype = dim**-0.5, torch.bfloat16
    q, k, v = (torch.randn(total, heads, dim, device="cuda", dtype=dtype) for _ in range(3))
    grad = torch.randn(total, heads, dim, device="cuda", dtype=dtype)

    cases = {}
    if "triton" in impls:
        jq, jk, jv = (t.clone().requires_grad_() for t in (q, k, v))

        def triton_fwd():
            return hstu_attention(
                jq, jk, jv, offsets, max_len, alpha=alpha, scaling_n=max_len, kernel="triton"
            )

        cases["triton"] = (triton_fwd, grad, (jq, jk, jv))
    if "sdpa" in impls:  # [B, H, N, D], as SDPA's FlashAttention path wants
        sq, sk, sv = (
            _jagged_to_padded(t, offsets, max_len).transpose(1, 2).contiguous().requires_grad_()
            for t in (q, k, v)
        )

        def sdpa_fwd():
            return F.scaled_dot_product_attention(sq, sk, sv, is_causal=True)

        sgrad = _jagged_to_padded(grad, offsets, max_len).transpose(1, 2).contiguous()
        cases["sdpa"] = (sdpa_fwd, sgrad, (sq, sk, sv))
    if "eager" in impls:
        pq, pk, pv = (_jagged_to_padded(t, offsets, max_len).requires_grad_() for t in (q, k, v))

        def eager_fwd():
            return padded_hstu_attention(pq, pk, pv, lengths, alpha=alpha, scaling_n=max_len)

        cases["eager"] = (eager_fwd, _jagged_to_padded(grad, offsets, max_len), (pq, pk, pv))

    rows = []
    for name, (fwd, g, inputs) in cases.items():

        def fwd_bwd(fwd=fwd, g=g, inputs=inputs):
            torch.autograd.grad(fwd(), inputs, g)

        with torch.no_grad():
            fwd_ms = _median_ms(fwd, reps, warmup)
        fwd_bwd_ms = _median_ms(fwd_bwd, reps, warmup)
        rows.append(
            {
                "bench": "hstu_attention",
                "impl": name,
                "B": batch,
                "N": max_len,
                "H": heads,
                "D": dim,
                "dtype": "bf16",
                "reps": reps,
                "fwd_ms": round(fwd_ms, 4),
                "fwd_tflops": round(fwd_flops / fwd_ms / 1e9, 1),
                "fwd_bwd_ms": round(fwd_bwd_ms, 4),
                "fwd_bwd_tflops": round(3.5 * fwd_flops / fwd_bwd_ms / 1e9, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="128x1024,32x4096,8x8192", help="BxN,BxN,...")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--impls", default="triton,sdpa,eager")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("attention_bench needs a CUDA device")
    impls = args.impls.split(",")
    for shape in args.shapes.split(","):
        batch, max_len = (int(x) for x in shape.split("x"))
        rows = {
            r["impl"]: r
            for r in bench_shape(batch, max_len, args.heads, args.dim, args.reps, args.warmup, impls)
        }
        if "triton" in rows:
            summary = {"bench": "hstu_attention_ratio", "B": batch, "N": max_len}
            for base in ("sdpa", "eager"):
                if base in rows:
                    for phase in ("fwd", "fwd_bwd"):
                        summary[f"triton_over_{base}_{phase}"] = round(
                            rows[base][f"{phase}_ms"] / rows["triton"][f"{phase}_ms"], 2
                        )
            print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
