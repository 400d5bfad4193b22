"""A short bf16-autocast training run of negseq's STU stack on CUDA, Triton vs PyTorch kernel.

Uses negseq.model.device (training_autocast, select_kernel) and `negseq.model.stu.STUStack`,
the layer the model trains with (DESIGN §6). Prints JSON lines: the first-step loss for
both kernels (they should agree to bf16 precision), the loss after `--steps` Adam steps,
and median step time.

    PYTHONPATH=src python3 benchmarks/gpu_stu_step.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from negseq.model.device import select_kernel, training_autocast
from negseq.model.stu import STULayer, STUStack


def train(kernel: str, args, x, target, offsets) -> dict:
    torch.manual_seed(0)
    stack = STUStack(
        [
            STULayer(
                args.dim,
                args.heads,
                args.head_dim,
                args.head_dim,
                output_dropout_ratio=0.0,
                scaling_seqlen=args.max_len,
                kernel=kernel,
            )
            for _ in range(args.layers)
        ]
    ).cuda()
    opt = torch.optim.Adam(stack.parameters(), lr=1e-3)
    losses, times = [], []
    for _ in range(args.steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with training_autocast(x.device):
            loss = F.mse_loss(stack(x, offsets, args.max_len).float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        losses.append(float(loss.detach()))
    return {
        "bench": "stu_train",
        "kernel": kernel,
        "first_loss": round(losses[0], 6),
        "last_loss": round(losses[-1], 6),
        "steps": args.steps,
        "median_step_ms": round(1e3 * statistics.median(times[2:]), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-len", type=int, default=1024)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    device = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, args.max_len + 1, (args.batch,), generator=gen)
    offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]).to(device)
    x = torch.randn(int(lengths.sum()), args.dim, generator=gen).to(device)
    target = torch.randn(x.shape, generator=gen).to(device)
    kernels = ("pytorch", select_kernel(device))
    rows = [train(kernel, args, x, target, offsets) for kernel in kernels]
    for row in rows:
        print(json.dumps(row), flush=True)
    first = [r["first_loss"] for r in rows]
    print(
        json.dumps(
            {
                "bench": "stu_train_agreement",
                "kernels": [r["kernel"] for r in rows],
                "first_loss_rel_diff": round(abs(first[0] - first[1]) / abs(first[0]), 5),
                "both_decrease": all(r["last_loss"] < r["first_loss"] for r in rows),
            }
        )
    )


if __name__ == "__main__":
    main()
