"""Inputs and outputs: sources planned from metadata, sampled-output sinks, and prepare."""

from negseq.io.prepare import SEQUENCE_SCHEMA, Prepared, prepare, prepare_sequences
from negseq.io.sinks import SampledSink, config_hash, read_manifest, verify_outputs
from negseq.io.sources import BatchDescriptor, CsvOptions, Source, SourceReader

__all__ = [
    "SEQUENCE_SCHEMA",
    "BatchDescriptor",
    "CsvOptions",
    "Prepared",
    "SampledSink",
    "Source",
    "SourceReader",
    "config_hash",
    "prepare",
    "prepare_sequences",
    "read_manifest",
    "verify_outputs",
]
