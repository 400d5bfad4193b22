"""Triton kernels (CUDA, or the Triton interpreter on CPU with TRITON_INTERPRET=1).

Nothing is imported here, so `negseq.model.ops` loads without triton installed; the
dispatcher imports `negseq.model.ops.triton.hstu_attention` when a Triton kernel is asked for.
"""
