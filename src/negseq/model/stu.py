"""STU layers (generative-recommenders' production STU) over jagged or padded sequences.

One layer: `x_n = LN(x)`; `u, v, q, k = split(x_n @ W + b)`; `u = SiLU(u)`;
per head `A = SiLU(alpha q k^T) / N`, causal with the diagonal, no softmax; `a = A v`;
`out = x + dropout(cat[u, a, u * LN(a)]) @ W_o`.

`STULayer._layer` is that math, once; only the attention call differs between the two
entry points. `forward` works on jagged values [L, D] with offsets [B+1] and calls the
attention dispatcher (`kernel` "auto", "pytorch" or "triton"). `forward_padded` works on a
padded [B, N, D] batch and calls the PyTorch reference core (`padded_hstu_attention`)
directly: static-shape ops that `export` traces with a dynamic N.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from negseq.model.ops import Kernel, check_kernel, hstu_attention, padded_hstu_attention

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class STULayer(nn.Module):
    """One STU block; `scaling_seqlen=-1` divides attention by the batch's max length."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        hidden_dim: int,
        attention_dim: int,
        output_dropout_ratio: float = 0.3,
        attn_alpha: float | None = None,
        max_attn_len: int = 0,
        contextual_seq_len: int = 0,
        scaling_seqlen: int = -1,
        kernel: Kernel | str = Kernel.PYTORCH,
    ) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.attention_dim = attention_dim
        self.output_dropout_ratio = output_dropout_ratio
        self.alpha = attn_alpha if attn_alpha is not None else 1.0 / math.sqrt(attention_dim)
        self.max_attn_len = max_attn_len
        self.contextual_seq_len = contextual_seq_len
        self.scaling_seqlen = scaling_seqlen
        self.kernel = check_kernel(kernel)
        uvqk_dim = (2 * hidden_dim + 2 * attention_dim) * num_heads
        self.input_norm = nn.LayerNorm(embedding_dim)
        self.uvqk = nn.Linear(embedding_dim, uvqk_dim)
        self.output_norm = nn.LayerNorm(hidden_dim * num_heads)
        self.output = nn.Linear(3 * hidden_dim * num_heads, embedding_dim, bias=False)
        nn.init.xavier_uniform_(self.uvqk.weight)
        nn.init.zeros_(self.uvqk.bias)
        nn.init.xavier_uniform_(self.output.weight)

    def _attention_options(self, max_len: int) -> dict:
        scaling_n = self.scaling_seqlen if self.scaling_seqlen > 0 else max(max_len, 1)
        return {
            "alpha": self.alpha,
            "scaling_n": scaling_n,
            "max_attn_len": self.max_attn_len,
            "contextual_seq_len": self.contextual_seq_len,
        }

    def _layer(self, x: torch.Tensor, attend: Attend) -> torch.Tensor:
        """The STU math on x [..., D]; `attend(q, k, v)` is the attention: q, k [..., H, Da],
        v [..., H, Dh] -> [..., H, Dh]."""
        heads, hidden, attn = self.num_heads, self.hidden_dim, self.attention_dim
        u, v, q, k = torch.split(
            self.uvqk(self.input_norm(x)),
            [hidden * heads, hidden * heads, attn * heads, attn * heads],
            -1,
        )
        lead = x.shape[:-1]
        u = F.silu(u)
        a = attend(
            q.reshape(*lead, heads, attn), k.reshape(*lead, heads, attn), v.reshape(*lead, heads, hidden)
        ).flatten(-2)
        y = torch.cat([u, a, u * self.output_norm(a)], dim=-1)
        y = F.dropout(y, p=self.output_dropout_ratio, training=self.training)
        return x + self.output(y)

    def forward(self, x: torch.Tensor, offsets: torch.Tensor, max_len: int) -> torch.Tensor:
        """x: jagged values [L, D]; offsets [B+1]; max_len >= every row's length. Returns [L, D]."""
        options = self._attention_options(max_len)
        return self._layer(
            x, lambda q, k, v: hstu_attention(q, k, v, offsets, max_len, kernel=self.kernel, **options)
        )

    def forward_padded(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x: padded [B, N, D]; lengths [B]. Returns [B, N, D]; padded positions hold junk."""
        options = self._attention_options(x.shape[1])
        return self._layer(x, lambda q, k, v: padded_hstu_attention(q, k, v, lengths, **options))


class STUStack(nn.Module):
    """STU layers applied in order."""

    def __init__(self, layers: list[STULayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, offsets: torch.Tensor, max_len: int) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, offsets, max_len)
        return x

    def forward_padded(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = cast(STULayer, layer).forward_padded(x, lengths)
        return x
