"""Training with a validation split: the LR schedule, validation steps, early stopping that keeps
the best epoch's weights, and the same run on the in-process executor and on Ray Train."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from negseq.batch import JaggedBatch, JaggedFeature
from negseq.config import load_config
from negseq.errors import NegseqError
from negseq.model.hstu_match import HSTUMatch
from negseq.model.metrics import evaluate
from negseq.sampler import ItemTable
from negseq.train.fit import StepPlan, fit_stream
from negseq.train.schedule import LRSchedule
from negseq.train.validation import ValidationSettings, Validator

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = Path(__file__).resolve().parents[1]
NUM_ITEMS = 40


# ---- the LR schedule ---------------------------------------------------------------------------


def test_warmup_then_cosine_and_linear_decay_by_hand():
    # 10 steps, warmup ceil(0.2 * 10) = 2: lr/2, lr, then decay over the remaining 8 steps
    cosine = LRSchedule.of(0.1, 10, warmup_fraction=0.2, decay="cosine")
    assert cosine.warmup_steps == 2
    want = [0.05, 0.1] + [0.1 * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
    assert [cosine(s) for s in range(10)] == pytest.approx(want, abs=1e-15)
    assert cosine(4) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi / 4)))  # 0.085355...
    linear = LRSchedule.of(0.1, 10, warmup_fraction=0.2, decay="linear")
    assert [linear(s) for s in range(10)] == pytest.approx(
        [0.05, 0.1, 0.1, 0.0875, 0.075, 0.0625, 0.05, 0.0375, 0.025, 0.0125]
    )
    constant = LRSchedule.of(0.1, 10, warmup_fraction=0.0)
    assert [constant(s) for s in (0, 5, 9)] == [0.1, 0.1, 0.1]
    assert LRSchedule.of(0.1, 10, decay="cosine")(0) == 0.1  # no warmup: the full rate at once
    assert LRSchedule.of(0.1, 10, decay="linear")(20) == 0.0  # past the plan: never negative


def test_the_loop_sets_the_scheduled_rate_of_each_update():
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=123.0)
    seen: list[float] = []
    original = optimizer.step

    def step(*args, **kwargs):
        seen.append(optimizer.param_groups[0]["lr"])
        return original(*args, **kwargs)

    optimizer.step = step  # type: ignore[method-assign]
    schedule = LRSchedule.of(0.01, 6, warmup_fraction=0.5, decay="linear")
    fit_stream(model, _batches(6), optimizer=optimizer, plan=StepPlan.of(3, 2), schedule=schedule)
    assert seen == pytest.approx([schedule(s) for s in range(6)])
    assert seen == pytest.approx([0.01 / 3, 0.02 / 3, 0.01, 0.01, 0.01 * 2 / 3, 0.01 / 3])


def test_validation_falls_at_epoch_ends_of_each_workers_share():
    assert StepPlan.of(5, 4).validation_steps(1) == [5, 10, 15, 20]
    assert StepPlan.of(5, 4).validation_steps(3) == [15, 20]  # and always after the last step
    assert StepPlan.of(5, 4).validation_steps(0) == [20]
    assert StepPlan.of(5, 4, max_steps=12).validation_steps(1) == [5, 10, 12]
    two = StepPlan.of(7, 2, num_workers=2)  # Ray Train's equal split: 7 of 14 batches each
    assert two.total_steps == 7 and two.validation_steps(1) == [3, 7]
    assert two.epochs_at(7) == 2 and StepPlan.of(5, 4).epochs_at(10) == 2


# ---- early stopping picks the best epoch --------------------------------------------------------


def _model(seed: int = 0) -> HSTUMatch:
    torch.manual_seed(seed)
    return HSTUMatch(NUM_ITEMS, 8, num_layers=1, max_seq_len=6, layout="interleaved", objective="last")


def _items() -> ItemTable:
    return ItemTable.from_arrow(pa.table({"id": np.arange(1, NUM_ITEMS + 1), "weight": np.ones(NUM_ITEMS)}))


def _valid_table(rows: int = 80) -> pa.Table:
    rng = np.random.default_rng(7)
    histories = [
        rng.choice(np.arange(1, NUM_ITEMS + 1), size=int(rng.integers(1, 6)), replace=False)
        for _ in range(rows)
    ]
    targets = [int(rng.integers(1, NUM_ITEMS + 1)) for _ in range(rows)]
    return pa.table(
        {
            "uih": pa.array([h.tolist() for h in histories], pa.list_(pa.int64())),
            "target": pa.array(targets, pa.int64()),
        }
    )


def _batches(count: int) -> list[JaggedBatch]:
    """`count` batches of 2 rows, one positive and 2 negatives each (dense item rows)."""
    out = []
    for i in range(count):
        out.append(
            JaggedBatch(
                uih=JaggedFeature(torch.tensor([1 + i % 5, 2, 3]), torch.tensor([0, 2, 3])),
                candidate=JaggedFeature(torch.tensor([4, 5, 6, 7, 8, 9]), torch.tensor([0, 3, 6])),
                cand_pos_lengths=torch.tensor([1, 1], dtype=torch.int32),
                layout="interleaved",
                neg_per_pos=2,
            )
        )
    return out


class _Walk(torch.optim.Optimizer):
    """An "optimizer" that walks the model through prepared weights, one set an epoch: the
    validation curve is then exactly the one the test built."""

    def __init__(self, model: torch.nn.Module, states: list[dict], steps_per_epoch: int) -> None:
        super().__init__(model.parameters(), {"lr": 1.0})
        self.model, self.states, self.steps_per_epoch, self.calls = model, states, steps_per_epoch, 0

    def step(self, closure=None):  # noqa: ARG002 - the optimizer interface
        self.model.load_state_dict(self.states[min(self.calls // self.steps_per_epoch, len(self.states) - 1)])
        self.calls += 1


def test_early_stopping_keeps_the_best_validation_epochs_weights():
    items, valid = _items(), _valid_table()
    # candidate weights scored on the valid split; the test orders them into a curve
    scored = []
    for seed in range(12):
        state = _model(seed).state_dict()
        model = _model()
        model.load_state_dict(state)
        scored.append((evaluate(model, valid, items, ks=(10,))["model"]["NDCG@10"], seed, state))
    scored.sort(key=lambda s: s[0])
    values = [s[0] for s in scored]
    assert len(set(values)) >= 6, f"the candidate weights must score apart: {values}"
    distinct = [scored[values.index(v)] for v in sorted(set(values))]
    worst, low, mid, best = distinct[0], distinct[1], distinct[2], distinct[-1]
    # epoch 1 mid, epoch 2 the best, then worse three times: patience 3 stops after epoch 5;
    # the last epoch (never reached) would have been better still, to show training did stop
    curve = [mid, best, low, worst, low, best]
    steps_per_epoch = 2
    model = _model()
    walk = _Walk(model, [s[2] for s in curve], steps_per_epoch)
    validator = Validator(ValidationSettings(valid, items, ks=(10,), monitor="NDCG@10", patience=3))
    plan = StepPlan.of(steps_per_epoch, len(curve))
    seen: list[dict] = []
    report = fit_stream(
        model,
        _batches(2 * len(curve)),
        optimizer=walk,
        plan=plan,
        validator=validator,
        on_validate=seen.append,
    )
    assert report.steps == 5 * steps_per_epoch and validator.stopped_early
    assert [e["epoch"] for e in validator.curve] == [1, 2, 3, 4, 5] and seen == validator.curve
    assert [e["NDCG@10"] for e in validator.curve] == pytest.approx(
        [mid[0], best[0], low[0], worst[0], low[0]]
    )
    assert validator.best is not None and validator.best["epoch"] == 2 and validator.best["step"] == 4
    # the model holds epoch 5's weights until the best are restored: then exactly epoch 2's
    assert evaluate(model, valid, items, ks=(10,))["model"]["NDCG@10"] == pytest.approx(low[0])
    validator.restore_best(model)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, best[2][name], rtol=0, atol=0, equal_nan=True, msg=name)
    summary = validator.summary()
    assert summary["best"]["epoch"] == 2 and summary["stopped_early"] and len(summary["curve"]) == 5


def test_a_tie_keeps_the_earlier_epoch_and_patience_zero_never_stops():
    items, valid = _items(), _valid_table()
    states = [_model(seed).state_dict() for seed in (3, 3, 3)]  # the same weights three times
    model = _model()
    validator = Validator(ValidationSettings(valid, items, ks=(10,), monitor="HR@10", patience=0))
    fit_stream(
        model, _batches(3), optimizer=_Walk(model, states, 1), plan=StepPlan.of(1, 3), validator=validator
    )
    assert len(validator.curve) == 3 and not validator.stopped_early
    assert validator.best is not None and validator.best["epoch"] == 1


def test_a_resumed_validator_continues_the_curve():
    items, valid = _items(), _valid_table()
    first = Validator(ValidationSettings(valid, items, patience=2))
    first.validate(_model(1), step=5, epoch=1, loss=1.0)
    resumed = Validator(ValidationSettings(valid, items, patience=2))
    resumed.load_state_dict(first.state_dict())
    assert resumed.curve == first.curve and resumed.best == first.best
    assert not resumed.validate(_model(1), step=10, epoch=2, loss=1.0)  # a tie: not better
    assert resumed.validate(_model(1), step=15, epoch=3, loss=1.0)  # the second: patience 2


# ---- config --------------------------------------------------------------------------------------


def _job(train: str) -> dict:
    text = (REPO / "tests" / "data" / "tiny_job.toml").read_text().replace("OUTPUT_DIR", "/tmp/unused")
    text = text.replace("[train]\n", f"[train]\n{train}\n")
    import tomllib

    return tomllib.loads(text)


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ('monitor = "HR@5"', '[train] monitor: expected MRR or a K of eval_ks [10, 50, 200], got "HR@5"'),
        ('monitor = "recall@10"', '[train] monitor: expected "MRR", or "HR@K" or "NDCG@K"'),
        ('lr_schedule = "step"', '[train] lr_schedule: expected one of "constant", "cosine", "linear"'),
        ("warmup_fraction = 1.0", "[train] warmup_fraction: expected a number in [0, 1), got 1.0"),
        ("patience = -1", "[train] patience: expected an integer >= 0, got -1"),
        ("eval_every = true", "[train] eval_every: expected an integer >= 0, got true (a bool)"),
        ("patience = 2.0", "[train] patience: expected an integer >= 0, got 2.0 (a float)"),
    ],
)
def test_bad_training_keys_are_named(train, message):
    with pytest.raises(NegseqError) as err:
        load_config(_job(train), command="run", source="job.toml")
    assert message in str(err.value)


def test_training_defaults_and_a_monitor_of_eval_ks():
    config = load_config(_job('monitor = "HR@5"\neval_ks = [5, 10]'), command="run", source="job.toml")
    train = config.train
    assert train.monitor == "HR@5" and train.eval_ks == (5, 10)
    defaults = load_config(_job(""), command="run", source="job.toml").train
    assert (defaults.lr_schedule, defaults.warmup_fraction, defaults.eval_every, defaults.patience) == (
        "cosine",
        0.05,
        1,
        3,
    )
    assert defaults.monitor == "NDCG@10"


# ---- the same run on both executors ---------------------------------------------------------------


def _tiny_job(tmp_path: Path, executor: str) -> Path:
    text = (REPO / "tests" / "data" / "tiny_job.toml").read_text()
    text = text.replace("OUTPUT_DIR", str(tmp_path / executor))
    text = text.replace(
        "epochs = 1\nmax_steps = 3", 'epochs = 3\npatience = 1\nlr_schedule = "linear"\nwarmup_fraction = 0.2'
    )
    text = text.replace("[ray]\n", f'[ray]\nexecutor = "{executor}"\n')
    job = tmp_path / f"{executor}.toml"
    job.write_text(text)
    return job


@pytest.mark.timeout(600)
def test_local_and_ray_train_validate_stop_and_score_the_same(tmp_path, local_ray):
    from negseq.job import run_job

    results = {}
    for executor in ("local", "ray"):
        job = _tiny_job(tmp_path, executor)
        run_job(load_config(job, command="run"), quiet=True)
        results[executor] = json.loads((tmp_path / executor / "metrics.json").read_text())
    local, ray = results["local"], results["ray"]
    curve = local["validation"]["curve"]
    assert [e["epoch"] for e in curve] == [1, 2, 3][: len(curve)] and len(curve) >= 2
    assert [e["step"] for e in curve] == [4, 8, 12][: len(curve)]  # 200 users, 4 batches an epoch
    best = local["validation"]["best"]
    assert best == max(curve, key=lambda e: (e["NDCG@10"], -e["step"]))
    for key in ("model", "most_popular", "validation"):
        assert ray[key] == local[key], key
    assert ray["train"]["step"] == local["train"]["step"] and ray["train"]["loss"] == local["train"]["loss"]
