"""Jagged ops, STU layers, the HSTU match model, loss, metrics and export."""

from negseq.model.encoders import HSTUPositionalEncoder, L2Norm, UIHPreprocessor
from negseq.model.export import export, load_tower, predict
from negseq.model.hstu_match import HSTUMatch, STUConfig
from negseq.model.metrics import evaluate
from negseq.model.stu import STULayer, STUStack
from negseq.model.train import TrainReport, make_optimizer, train

__all__ = [
    "HSTUMatch",
    "HSTUPositionalEncoder",
    "L2Norm",
    "STUConfig",
    "STULayer",
    "STUStack",
    "TrainReport",
    "UIHPreprocessor",
    "evaluate",
    "export",
    "load_tower",
    "make_optimizer",
    "predict",
    "train",
]
