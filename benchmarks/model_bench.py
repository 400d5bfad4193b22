"""STU stack forward+backward throughput on CPU: jagged values vs a padded dense batch.

    python benchmarks/model_bench.py [--threads 1] [--reps 5]

Both paths run the same layers (`STUStack.forward` on jagged [L, D] with fbgemm/torch
index ops, `STUStack.forward_padded` on [B, N, D] with a mask) on the same rows, whose
lengths are uniform in [0.1 N, N]. Tokens/s counts real (unpadded) tokens for both, so the
ratio is the gain from not computing on padding. One JSON line per (N, impl); medians.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from negseq.model.jagged import BACKEND, asynchronous_complete_cumsum, jagged_to_padded_dense
from negseq.model.stu import STULayer, STUStack


def timed(fn, reps: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--lengths", type=int, nargs="+", default=[64, 200, 512])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    head_dim = args.dim // args.heads
    stack = STUStack(
        [
            STULayer(args.dim, args.heads, head_dim, head_dim, output_dropout_ratio=0.0)
            for _ in range(args.layers)
        ]
    )
    for n in args.lengths:
        lengths = torch.randint(max(1, n // 10), n + 1, (args.batch,))
        offsets = asynchronous_complete_cumsum(lengths)
        values = torch.randn(int(offsets[-1]), args.dim)
        padded = jagged_to_padded_dense(values, offsets, n)
        tokens = int(lengths.sum())

        def jagged_step(v=values, o=offsets, n=n) -> None:
            x = v.clone().requires_grad_()
            stack(x, o, n).sum().backward()

        def padded_step(d=padded, lens=lengths) -> None:
            x = d.clone().requires_grad_()
            mask = (torch.arange(d.shape[1]).view(1, -1) < lens.view(-1, 1)).unsqueeze(-1)
            (stack.forward_padded(x, lens) * mask).sum().backward()

        results = {}
        for impl, step in (("jagged", jagged_step), ("padded", padded_step)):
            seconds = timed(step, args.reps)
            results[impl] = seconds
            line = {
                "bench": "stu_fwd_bwd",
                "impl": impl,
                "N": n,
                "batch": args.batch,
                "tokens": tokens,
                "padded_tokens": args.batch * n,
                "dim": args.dim,
                "heads": args.heads,
                "layers": args.layers,
                "median_s": round(seconds, 5),
                "tokens_per_s": round(tokens / seconds),
                "threads": args.threads,
                "jagged_backend": BACKEND,
                "machine": platform.machine(),
            }
            if impl == "padded":
                line["jagged_speedup"] = round(seconds / results["jagged"], 2)
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
