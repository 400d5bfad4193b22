"""Sampler input, candidate sequences, jagged batches, readers/writers and executors."""

from negseq.pipeline.jagged_batch import JaggedBatch, JaggedFeature, Layout

__all__ = ["JaggedBatch", "JaggedFeature", "Layout"]
