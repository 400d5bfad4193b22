"""Model ops, laid out as generative-recommenders' `ops/`: one dispatcher per op with a
`Kernel` enum, the PyTorch reference in `ops.pytorch`, the GPU kernels in `ops.triton`.

The attention math lives here once: `padded_hstu_attention` is the reference core (the
jagged reference pads into it; `STULayer.forward_padded`, hence export, calls it directly),
and the Triton kernel is tested against it. The rest of the layer is `STULayer._layer`.
"""

from negseq.model.ops.dispatch import hstu_attention
from negseq.model.ops.kernel import KERNEL_CHOICES, Kernel, check_kernel, select_kernel
from negseq.model.ops.pytorch import padded_hstu_attention, pytorch_hstu_attention, valid_attention_mask

__all__ = [
    "KERNEL_CHOICES",
    "Kernel",
    "check_kernel",
    "hstu_attention",
    "padded_hstu_attention",
    "pytorch_hstu_attention",
    "select_kernel",
    "valid_attention_mask",
]
