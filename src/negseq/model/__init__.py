"""Jagged ops, STU layers, the HSTU match model, its loss, metrics and export."""

from negseq.model.encoders import HSTUPositionalEncoder, L2Norm, UIHPreprocessor
from negseq.model.export import export, load_tower, predict
from negseq.model.hstu_match import HSTUMatch, STUConfig
from negseq.model.metrics import evaluate
from negseq.model.stu import STULayer, STUStack

__all__ = [
    "HSTUMatch",
    "HSTUPositionalEncoder",
    "L2Norm",
    "STUConfig",
    "STULayer",
    "STUStack",
    "UIHPreprocessor",
    "evaluate",
    "export",
    "load_tower",
    "predict",
]
