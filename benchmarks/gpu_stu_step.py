"""A short bf16-autocast training run of an STU-like layer stack on CUDA, Triton vs PyTorch kernel.

Uses negseq.model.device (training_autocast, select_kernel). The layer follows DESIGN §6
(LN -> fused u,v,q,k projection -> SiLU(u) -> HSTU attention -> cat[u, a, u * LN(a)] @ W_o,
residual). Prints JSON lines: the first-step loss for both kernels (they should agree to
bf16 precision), the loss after `--steps` Adam steps, and median step time.

    PYTHONPATH=src python3 benchmarks/gpu_stu_step.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from negseq.model.attention import hstu_attention
from negseq.model.device import select_kernel, training_autocast


class STULikeLayer(torch.nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.norm = torch.nn.LayerNorm(dim)
        self.uvqk = torch.nn.Linear(dim, 4 * heads * head_dim)
        self.attn_norm = torch.nn.LayerNorm(heads * head_dim)
        self.out = torch.nn.Linear(3 * heads * head_dim, dim)

    def forward(self, x, offsets, max_len, kernel):
        u, v, q, k = self.uvqk(self.norm(x)).chunk(4, dim=-1)
        shape = (x.shape[0], self.heads, self.head_dim)
        a = hstu_attention(
            q.reshape(shape),
            k.reshape(shape),
            v.reshape(shape),
            offsets,
            max_len,
            alpha=self.head_dim**-0.5,
            scaling_n=max_len,
            kernel=kernel,
        )
        a = a.reshape(x.shape[0], -1)
        u = F.silu(u)
        return x + self.out(torch.cat([u, a, u * self.attn_norm(a)], dim=-1))


def train(kernel: str, args, x, target, offsets) -> dict:
    torch.manual_seed(0)
    layers = torch.nn.ModuleList(
        STULikeLayer(args.dim, args.heads, args.head_dim) for _ in range(args.layers)
    ).cuda()
    opt = torch.optim.Adam(layers.parameters(), lr=1e-3)
    losses, times = [], []
    for _ in range(args.steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with training_autocast(x.device):
            h = x
            for layer in layers:
                h = layer(h, offsets, args.max_len, kernel)
            loss = F.mse_loss(h.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        losses.append(float(loss.detach()))
    return {
        "bench": "stu_like_train",
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
                "bench": "stu_like_train_agreement",
                "kernels": [r["kernel"] for r in rows],
                "first_loss_rel_diff": round(abs(first[0] - first[1]) / abs(first[0]), 5),
                "both_decrease": all(r["last_loss"] < r["first_loss"] for r in rows),
            }
        )
    )


if __name__ == "__main__":
    main()
