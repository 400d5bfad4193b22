"""PyTorch reference ops (any device): the implementations every other kernel is held to."""

from negseq.model.ops.pytorch.hstu_attention import (
    padded_hstu_attention,
    pytorch_hstu_attention,
    valid_attention_mask,
)

__all__ = ["padded_hstu_attention", "pytorch_hstu_attention", "valid_attention_mask"]
