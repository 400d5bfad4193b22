"""HSTUMatch on CUDA: Triton vs PyTorch attention kernel inside the real model.

    PYTHONPATH=src python3 benchmarks/gpu_hstu_match.py

1. float32: the same weights and batch through both kernels; loss and parameter-gradient
   differences (relative to the largest gradient entry).
2. bf16 autocast (`negseq.train.loop`): `--steps` AdamW steps from the same init with each
   kernel; first and last loss and median step time.
Prints JSON lines.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from negseq.batch import JaggedBatch, JaggedFeature
from negseq.model.hstu_match import HSTUMatch, STUConfig
from negseq.train.loop import make_optimizer, train


def random_batch(num_items: int, batch: int, max_len: int, neg: int, gen: torch.Generator) -> JaggedBatch:
    lengths = torch.randint(max_len // 10, max_len + 1, (batch,), generator=gen)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    total = int(offsets[-1])
    uih = torch.randint(1, num_items + 1, (total,), generator=gen)
    cand = torch.randint(1, num_items + 1, (total, 1 + neg), generator=gen)
    return JaggedBatch(
        uih=JaggedFeature(uih, offsets),
        candidate=JaggedFeature(cand.reshape(-1), offsets * (1 + neg)),
        cand_pos_lengths=lengths.to(torch.int32),
        layout="interleaved",
        neg_per_pos=neg,
    )


def with_kernel(model: HSTUMatch, kernel: str) -> HSTUMatch:
    clone = copy.deepcopy(model)
    for layer in clone.stu.layers:
        layer.kernel = kernel
    return clone


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=20000)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--max-len", type=int, default=1024)
    p.add_argument("--neg", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    device = torch.device("cuda")
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    base = HSTUMatch(
        args.items,
        args.dim,
        stu=STUConfig(num_heads=args.heads, output_dropout_ratio=0.0),
        num_layers=2,
        max_seq_len=args.max_len,
        objective="autoregressive",
        input_dropout_ratio=0.0,
    ).to(device)
    batch = random_batch(args.items, args.batch, args.max_len, args.neg, gen).to(device)

    results = {}
    for kernel in ("pytorch", "triton"):
        model = with_kernel(base, kernel)
        out = model(batch)
        out["loss"].backward()
        results[kernel] = (float(out["loss"]), [p.grad.detach().clone() for p in model.parameters()])
    loss_py, grads_py = results["pytorch"]
    loss_tr, grads_tr = results["triton"]
    scale = max(float(g.abs().max()) for g in grads_py)
    grad_err = max(float((a - b).abs().max()) for a, b in zip(grads_py, grads_tr, strict=True)) / scale
    print(
        json.dumps(
            {
                "check": "fp32_parity",
                "loss_pytorch": loss_py,
                "loss_triton": loss_tr,
                "loss_abs_diff": abs(loss_py - loss_tr),
                "grad_max_rel_err": grad_err,
                "tokens": int(batch.uih.values.numel()),
            }
        ),
        flush=True,
    )

    batches = [random_batch(args.items, args.batch, args.max_len, args.neg, gen).to(device) for _ in range(4)]
    for kernel in ("pytorch", "triton"):
        model = with_kernel(base, kernel)
        optimizer = make_optimizer(model)
        step_times, losses = [], []
        for step in range(args.steps):
            torch.cuda.synchronize()
            start = time.perf_counter()
            report = train(model, [batches[step % 4]], optimizer=optimizer, device=device)
            torch.cuda.synchronize()
            step_times.append(time.perf_counter() - start)
            losses.append(report.losses[0])
        print(
            json.dumps(
                {
                    "check": "bf16_train",
                    "kernel": kernel,
                    "first_loss": losses[0],
                    "last_loss": losses[-1],
                    "median_step_ms": 1000 * statistics.median(step_times[2:]),
                    "tokens_per_step": int(batches[0].uih.values.numel()),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
