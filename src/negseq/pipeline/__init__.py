"""Sampler input, candidate sequences, jagged batches, readers/writers and executors."""

from negseq.pipeline.candidates import sample_candidates, sample_candidates_and_stats
from negseq.pipeline.combine import (
    combine_neg_as_candidate_sequence,
    combine_negs_to_candidate_suffix,
)
from negseq.pipeline.io import (
    CsvOptions,
    config_hash,
    iter_batches,
    open_dataset,
    output_name,
    read_manifest,
    read_table,
    remove_manifest,
    verify_outputs,
    write_batch_output,
    write_manifest,
)
from negseq.pipeline.jagged import to_jagged_batch
from negseq.pipeline.jagged_batch import JaggedBatch, JaggedFeature, Layout
from negseq.pipeline.local_executor import LocalExecutor, ordered_map
from negseq.pipeline.sampler_input import build_sampler_input, flatten_id_column
from negseq.pipeline.sequences import SEQUENCE_SCHEMA, prepare_sequences

__all__ = [
    "SEQUENCE_SCHEMA",
    "CsvOptions",
    "JaggedBatch",
    "JaggedFeature",
    "Layout",
    "LocalExecutor",
    "build_sampler_input",
    "combine_neg_as_candidate_sequence",
    "combine_negs_to_candidate_suffix",
    "config_hash",
    "flatten_id_column",
    "iter_batches",
    "open_dataset",
    "ordered_map",
    "output_name",
    "prepare_sequences",
    "read_manifest",
    "read_table",
    "remove_manifest",
    "sample_candidates",
    "sample_candidates_and_stats",
    "to_jagged_batch",
    "verify_outputs",
    "write_batch_output",
    "write_manifest",
]
