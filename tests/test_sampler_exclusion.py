"""The `exclude` policies: each one's negatives against its definition (chi-square), the exact
probabilities a SampledBatch carries and logQ uses (against a set-by-set reference and by hand),
the excluded-mass stats and `negseq run`'s warning, and the config key."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from negseq.batch import JaggedBatch
from negseq.candidates import CandidateSpec, sample_batch
from negseq.config import load_config
from negseq.errors import NegseqError
from negseq.executors.exclusion_check import exclusion_warning
from negseq.executors.plan import BatchWork, SamplingPlan
from negseq.io.sources import Source
from negseq.model.sampled_softmax import LogitBlock, sampled_softmax_logits
from negseq.sampler import EdgeTable, ItemTable, NegativeSampler, NegativeSamplerV2, build_sampler
from negseq.sampler.exclusion import total_stats

WEIGHTS = np.arange(1.0, 13.0)  # item id j (row j - 1) weighs j: p_j = j / 78
P = WEIGHTS / WEIGHTS.sum()
ITEMS = ItemTable.from_arrow(pa.table({"id": np.arange(1, 13, dtype=np.int64), "weight": WEIGHTS}))
# three users' sequences: the batch's positives {12, 11, 10, 3} hold 36/78 of the mass, the rows'
# {12, 11} 23/78, {10} 10/78, {12, 3} 15/78
ROWS = [[12, 11], [10], [12, 3]]
BATCH = pa.record_batch({"pos": pa.array(ROWS, pa.list_(pa.int64()))})
ROW_OF_POSITIVE = [0, 0, 1, 2, 2]


def sampler(exclude: str, **options) -> NegativeSampler:
    options = {"num_sample": 6, "max_retries": 5, **options}
    return NegativeSampler(ITEMS, item_id_field="pos", exclude=exclude, **options)


def excluded_set(exclude: str, row: int) -> set[int]:
    """The definition: which items a negative of a positive of `row` must not be."""
    if exclude == "batch":
        return {i for r in ROWS for i in r}
    return set(ROWS[row]) if exclude == "user" else set()


def drawn(exclude: str, layout: str = "interleaved", **options) -> tuple[np.ndarray, np.ndarray]:
    """(negatives, their probabilities) of 400 keyed batches."""
    s = sampler(exclude, **options)
    spec = CandidateSpec(layout=layout, neg_per_pos=50 if layout == "interleaved" else None)
    batches = [sample_batch(BATCH, s, spec, batch_index=k) for k in range(400)]
    return np.stack([b.negatives for b in batches]), np.stack([b.neg_probability for b in batches])


def exact(excluded: set[int], retries: int) -> np.ndarray:
    """A draw's distribution over ids 1..12: p_j (1 + m + .. + m^R) off the set, p_j m^R on it."""
    on = np.isin(np.arange(1, 13), sorted(excluded))
    m = P[on].sum()
    return np.where(on, P * m**retries, P * sum(m**t for t in range(retries + 1)))


def chi_square(ids: np.ndarray, expected: np.ndarray) -> float:
    """p-value of drawn ids (1..12) against a distribution; an impossible id fails outright."""
    counts = np.bincount(ids.ravel(), minlength=13)[1:]
    assert not counts[expected == 0].any(), (
        f"drew excluded ids {np.flatnonzero(counts * (expected == 0)) + 1}"
    )
    keep = expected > 0
    return stats.chisquare(counts[keep], expected[keep] / expected[keep].sum() * counts.sum()).pvalue


@pytest.mark.parametrize("exclude", ["batch", "user", "none"])
def test_each_policys_negatives_follow_its_definition(exclude):
    # 200 rounds: an excluded item is never kept, the rest follows the renormalised weights
    negatives, probability = drawn(exclude, max_retries=200)
    for q, row in enumerate(ROW_OF_POSITIVE):
        excluded = excluded_set(exclude, row)
        renormalised = np.where(np.isin(np.arange(1, 13), sorted(excluded)), 0.0, P)
        renormalised /= renormalised.sum()
        mine = negatives[:, 50 * q : 50 * (q + 1)]
        assert chi_square(mine, renormalised) > 1e-4
        np.testing.assert_allclose(probability[:, 50 * q : 50 * (q + 1)], renormalised[mine - 1])
    if exclude == "none":  # accidental hits exist, left to the model's mask
        assert (negatives[:, :50] == 12).any()


@pytest.mark.parametrize("exclude", ["batch", "user"])
def test_bounded_redraws_give_the_exact_probabilities(exclude):
    # one redraw round: an excluded item comes back with p m (a collision kept), the rest p (1 + m)
    negatives, probability = drawn(exclude, max_retries=1)
    for q, row in enumerate(ROW_OF_POSITIVE):
        expected = exact(excluded_set(exclude, row), 1)
        mine = negatives[:, 50 * q : 50 * (q + 1)]
        assert chi_square(mine, expected) > 1e-4
        np.testing.assert_allclose(probability[:, 50 * q : 50 * (q + 1)], expected[mine - 1])


def test_shared_negatives_carry_the_average_of_their_draws_distributions():
    # suffix layout, 6 shared draws over 5 positives: ef 2, draws 0-3 belong to positives 0 and 1
    # (row 0), draws 4-5 to positive 2 (row 1); every query scores all six
    negatives, probability = drawn("user", layout="suffix", max_retries=1)
    mixture = (4 * exact(set(ROWS[0]), 1) + 2 * exact(set(ROWS[1]), 1)) / 6
    assert chi_square(negatives, mixture) > 1e-4
    np.testing.assert_allclose(probability, mixture[negatives - 1])
    # "batch": one set for every draw, so the average is each draw's own
    negatives, probability = drawn("batch", layout="suffix", max_retries=1)
    np.testing.assert_allclose(probability, exact(excluded_set("batch", 0), 1)[negatives - 1])


def reference_probability(result, sets: list[set[int]], retries: int, shared: bool) -> np.ndarray:
    """Each draw's probability, set by set: draw s avoided sets[s] (item rows)."""
    proposal = ITEMS.weights / ITEMS.weights.sum()

    def law(excluded: set[int]) -> np.ndarray:
        on = np.isin(np.arange(len(proposal)), sorted(excluded))
        m = proposal[on].sum()
        return np.where(on, proposal * m**retries, proposal * sum(m**t for t in range(retries + 1)))

    if not sets:
        return np.empty(0)
    laws = np.stack([law(s) for s in sets])
    if shared:
        return laws.mean(axis=0)[result.rows]
    return laws[np.arange(len(result.rows)), result.rows]


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.lists(st.integers(1, 14), max_size=4), min_size=1, max_size=5),  # 13, 14 unknown
    exclude=st.sampled_from(["batch", "user", "none"]),
    shared=st.booleans(),
    n=st.integers(0, 7),
    retries=st.integers(0, 3),
    key=st.integers(0, 2**16),
)
def test_probabilities_match_a_set_by_set_reference(rows, exclude, shared, n, retries, key):
    s = sampler(exclude, num_sample=n, max_retries=retries)
    flat = np.array([i for r in rows for i in r], np.int64)
    lengths = np.array([len(r) for r in rows])
    per_positive = None if shared else n
    batch = {"pos": pa.array(flat, pa.int64())}
    result = s.get(batch, per_positive=per_positive, row_lengths=lengths, batch_index=key)
    owner = np.repeat(np.arange(len(rows)), lengths)
    group = result.expand_factor
    known = {int(i) - 1 for i in flat if i <= 12}
    sets = []
    for slot in range(len(result.ids)):
        q = slot // group
        if q >= len(flat):  # a call without positives: nothing to avoid
            sets.append(set())
            continue
        mine = {int(i) - 1 for i in rows[owner[q]] if i <= 12}
        sets.append({"batch": known, "user": mine, "none": set()}[exclude])
    np.testing.assert_allclose(s.probability(result), reference_probability(result, sets, retries, shared))
    assert result.stats["collisions_kept"] == sum(
        int(r) in st_ for r, st_ in zip(result.rows, sets, strict=True)
    )


def test_v2_probabilities_match_a_set_by_set_reference():
    edges = EdgeTable.from_arrow(
        pa.table({"userid": [1, 1, 1, 2, 2, 2, 2], "itemid": [12, 11, 11, 1, 5, 9, 12]})
    )
    pool = [1, 5, 9, 11, 12]  # the edge items: uniform over them
    users = {1: {11, 12}, 2: {1, 5, 9, 12}}
    v2 = NegativeSamplerV2(ITEMS, edges, num_sample=7, item_id_field="pos", user_id_field="u", max_retries=1)
    batch = {"pos": pa.array([12, 3, 9, 7], pa.int64()), "u": pa.array([1, 1, 2, 3], pa.int64())}
    for shared in (False, True):
        for key in range(50):
            result = v2.get(batch, per_positive=None if shared else 4, batch_index=key)
            laws = []
            for slot in range(len(result.ids)):
                q = slot // result.expand_factor
                user, positive = int(batch["u"][q].as_py()), int(batch["pos"][q].as_py())
                excluded = users.get(user, set()) | {positive}
                on = np.isin(pool, sorted(excluded))
                m = on.mean()
                laws.append(dict(zip(pool, np.where(on, m, 1 + m) / len(pool), strict=True)))
            ids = result.ids.tolist()
            if shared:
                expected = [np.mean([law[i] for law in laws]) for i in ids]
            else:
                expected = [law[i] for law, i in zip(laws, ids, strict=True)]
            np.testing.assert_allclose(v2.probability(result), expected)


# ---- the stats ---------------------------------------------------------------------------


def test_excluded_mass_by_hand():
    spec = CandidateSpec(layout="interleaved", neg_per_pos=3)
    batch_stats = sample_batch(BATCH, sampler("batch"), spec).stats
    assert batch_stats["excluded_mass"] == pytest.approx(36 / 78)
    assert batch_stats["excluded_mass_max"] == pytest.approx(36 / 78)
    # "user": every positive has 3 draws; rows 0, 0, 1, 2, 2 exclude 23, 23, 10, 15, 15 of 78
    user_stats = sample_batch(BATCH, sampler("user"), spec).stats
    assert user_stats["excluded_mass"] == pytest.approx((23 + 23 + 10 + 15 + 15) / (5 * 78))
    assert user_stats["excluded_mass_max"] == pytest.approx(23 / 78)
    none_stats = sample_batch(BATCH, sampler("none"), spec).stats
    assert none_stats["excluded_mass"] == none_stats["excluded_mass_max"] == 0.0
    assert none_stats["redraws"] == none_stats["collisions_kept"] == 0
    # an unknown positive (99) excludes nothing; suffix: the 6 draws belong to positives 0-2 (ef 2)
    unknown = pa.record_batch({"pos": pa.array([[99, 12], [10, 3]], pa.list_(pa.int64()))})
    shared = sample_batch(unknown, sampler("user"), CandidateSpec(layout="suffix")).stats
    assert shared["excluded_mass"] == pytest.approx((4 * 12 + 2 * 13) / (6 * 78))
    assert shared["excluded_mass_max"] == pytest.approx(13 / 78)
    # several calls: counts add up, the mass is averaged over draws, the max is the largest
    merged = total_stats([batch_stats, {**user_stats, "draws": 3 * batch_stats["draws"]}])
    assert merged["draws"] == 4 * batch_stats["draws"]
    assert merged["excluded_mass"] == pytest.approx((36 / 78 + 3 * user_stats["excluded_mass"]) / 4)
    assert merged["excluded_mass_max"] == pytest.approx(36 / 78)


def _work(tmp_path: Path, exclude: str) -> BatchWork:
    rng = np.random.default_rng(0)
    histories = [rng.choice(np.arange(1, 13), size=8, replace=False).tolist() for _ in range(40)]
    pq.write_table(pa.table({"pos": pa.array(histories, pa.list_(pa.int64()))}), tmp_path / "train.parquet")
    spec = CandidateSpec(layout="interleaved", neg_per_pos=2)
    plan = SamplingPlan(Source.open(str(tmp_path / "train.parquet")), 10, spec, epochs=(0, 1))
    return BatchWork(sampler(exclude), plan)


def test_a_large_excluded_mass_is_one_warning(tmp_path):
    # 10 users of 8 of 12 items: the batch's positives are (nearly) every item
    warning = exclusion_warning(_work(tmp_path, "batch"))
    assert warning is not None and "\n" not in warning
    assert warning.startswith('warning: exclude = "batch" removes 100% of the sampler\'s probability mass')
    assert 'try exclude = "user"' in warning
    # a row's own 8 of 12 items hold more than half the mass too: said as such, without the advice
    user = exclusion_warning(_work(tmp_path, "user"))
    assert user is not None and user.startswith('warning: exclude = "user" removes ')
    assert 50 < int(user.split("removes ")[1].split("%")[0]) < 100 and "try" not in user
    assert exclusion_warning(_work(tmp_path, "none")) is None


@pytest.mark.timeout(300)
def test_negseq_run_warns_once(tmp_path, capsys):
    from negseq.job import run_job

    job = {
        "name": "warn",
        "data": {
            "max_seq_len": 5,
            "synthetic": {"num_users": 40, "num_items": 25, "min_len": 4, "max_len": 7},
        },
        "sampler": {"negative_sampler": {"num_sample": 2, "exclude": "batch"}},
        "candidates": {"batch_size": 20},
        "model": {"embedding_dim": 8, "num_layers": 1},
        "train": {"max_steps": 1, "eval_ks": [10]},
        "ray": {"executor": "local"},
        "output": {"dir": str(tmp_path / "out")},
    }
    run_job(load_config(job, command="run", source=tmp_path / "job.toml"), quiet=True)
    lines = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(lines) == 1 and lines[0].startswith('[negseq run] warning: exclude = "batch" removes ')


# ---- logQ ------------------------------------------------------------------------------------


def test_logq_uses_the_exact_probability_by_hand():
    # items 1..4 weigh 1..4 (p = .1 .2 .3 .4); the positive 4 is excluded (m = 0.4), one redraw
    # round: another item j is drawn with p_j (1 + 0.4), item 4 comes back with 0.4 * 0.4
    items = ItemTable.from_arrow(pa.table({"id": np.arange(1, 5, dtype=np.int64), "weight": [1.0, 2, 3, 4]}))
    s = NegativeSampler(items, num_sample=2, item_id_field="pos", max_retries=1, exclude="batch")
    sampled = sample_batch(pa.record_batch({"pos": pa.array([4], pa.int64())}), s, CandidateSpec())
    # the draws of key (0, 0, 0): item 1, then item 4 twice (a collision kept after one redraw)
    assert sampled.negatives.tolist() == [1, 4]
    by_hand = [0.1 * 1.4, 0.4 * 0.4]
    np.testing.assert_allclose(sampled.neg_probability, by_hand)
    batch = JaggedBatch.from_arrays(sampled.to_jagged(items, uih_field="pos", max_seq_len=4))
    scores = torch.tensor([[0.5, 0.2, -0.1]])  # positive 4, negative 1, negative 4
    log_p = torch.log(batch.neg_probability).view(1, 2)
    hits = torch.tensor([[True, False]])  # negative 4 is the positive: masked, still one of k draws
    logits, _ = sampled_softmax_logits(
        [
            LogitBlock(scores[:, :1], torch.ones(1, 1, dtype=torch.bool)),
            LogitBlock(scores[:, 1:], hits, log_p, 2),
        ],
        temperature=0.5,
    )
    # s / T; the negative less log(k p), k = 2 draws
    expected = [1.0, 0.4 - math.log(2 * 0.14), -math.inf]
    torch.testing.assert_close(logits, torch.tensor([expected]))
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor([0]))
    assert float(loss) == pytest.approx(-1.0 + math.log(math.exp(1.0) + math.exp(expected[1])), rel=1e-6)


# ---- the config key --------------------------------------------------------------------------


def _job(tmp_path: Path, kind: str, extra: str) -> Path:
    pq.write_table(pa.table({"id": [1, 2, 3], "weight": [1.0, 1.0, 2.0]}), tmp_path / "items.parquet")
    keys = {
        "negative_sampler": "input_path = 'items.parquet'\nnum_sample = 2\nitem_id_field = 'pos'\n",
        "negative_sampler_v2": "item_input_path = 'items.parquet'\npos_edge_input_path = 'e.parquet'\n"
        "num_sample = 2\nitem_id_field = 'pos'\nuser_id_field = 'u'\n",
    }[kind]
    path = tmp_path / "job.toml"
    path.write_text(f"[input]\npath = 'x.parquet'\n[output]\ndir = 'out'\n[sampler.{kind}]\n{keys}{extra}")
    return path


@pytest.mark.parametrize(
    ("kind", "extra", "message"),
    [
        (
            "negative_sampler",
            'exclude = "users"\n',
            r'\[sampler.negative_sampler\] exclude: expected one of "batch", "user", "none", got "users"',
        ),
        (
            "negative_sampler",
            "exclude = 1\n",
            r"\[sampler.negative_sampler\] exclude: expected one of .*got 1",
        ),
        ("negative_sampler", "exclude = true\n", r"\[sampler.negative_sampler\] exclude: .*bool"),
        ("negative_sampler_v2", 'exclude = "batch"\n', r"\[sampler.negative_sampler_v2\].*exclude"),
    ],
)
def test_bad_exclude_keys_name_table_key_and_value(tmp_path, kind, extra, message):
    with pytest.raises(NegseqError, match=message):
        load_config(_job(tmp_path, kind, extra), command="sample")


def test_exclude_reaches_the_sampler_with_its_default(tmp_path):
    for extra, expected in [("", "user"), ('exclude = "batch"\n', "batch"), ('exclude = "none"\n', "none")]:
        job = load_config(_job(tmp_path, "negative_sampler", extra), command="sample")
        assert job.sampler is not None and job.sampler.exclude == expected
        assert build_sampler(job.sampler).exclude == expected
    with pytest.raises(NegseqError, match=r"NegativeSampler: exclude must be one of .*got 'all'"):
        NegativeSampler(ITEMS, num_sample=1, item_id_field="pos", exclude="all")  # type: ignore[arg-type]
    with pytest.raises(NegseqError, match="row_lengths sum to 2, the batch has 3 positives"):
        sampler("user").get({"pos": pa.array([1, 2, 3], pa.int64())}, row_lengths=np.array([1, 1]))
