"""Sampled softmax: logQ correction, accidental hits and in-batch negatives against hand
computations (plain Python floats), and the correction's unbiasedness by exact enumeration."""

import itertools
import math

import numpy as np
import pytest
import torch

from negseq.batch import JaggedBatch, JaggedFeature
from negseq.errors import NegseqError
from negseq.model.hstu_match import HSTUMatch, STUConfig
from negseq.model.sampled_softmax import LogitBlock, sampled_softmax_logits

pytestmark = pytest.mark.usefixtures("one_torch_thread")

t = torch.tensor
NUM_ITEMS = 12


def jf(rows):
    values = t([v for r in rows for v in r], dtype=torch.int64)
    offsets = t([0, *np.cumsum([len(r) for r in rows]).tolist()], dtype=torch.int64)
    return JaggedFeature(values, offsets)


def model(**kwargs):
    torch.manual_seed(0)
    stu = STUConfig(num_heads=2, output_dropout_ratio=0.0)
    return HSTUMatch(NUM_ITEMS, 8, stu=stu, max_seq_len=6, input_dropout_ratio=0.0, **kwargs).eval()


def softmax_loss(logits: list[float]) -> float:
    """-log softmax(logits)[0], skipping masked (None) entries."""
    real = [x for x in logits if x is not None]
    return -real[0] + math.log(sum(math.exp(x) for x in real))


def scores(m: HSTUMatch, uih: JaggedFeature, rows: list[int], items: list[list[int]]) -> list[list[float]]:
    """Plain-float similarity of each query (the user row `rows[q]`) with its items."""
    with torch.no_grad():
        user = m.user_embeddings(uih)
        table = m.item_embeddings(torch.arange(NUM_ITEMS + 1))
    return [[float(user[r] @ table[i]) for i in its] for r, its in zip(rows, items, strict=True)]


# ----- the correction on numbers --------------------------------------------------------


def test_logq_on_numbers_by_hand():
    pos = LogitBlock(t([[2.0]]), t([[True]]))
    sampled = LogitBlock(t([[1.0, 0.5]]), t([[True, True]]), torch.log(t([[0.1, 0.4]])), draws=2)
    logits, mask = sampled_softmax_logits([pos, sampled], temperature=0.5)
    # positive 2 / 0.5 = 4 uncorrected; negative j: s_j / T - log(k p_j), k = 2
    expected = [4.0, 2.0 - math.log(2 * 0.1), 1.0 - math.log(2 * 0.4)]
    torch.testing.assert_close(logits, t([expected]))
    assert mask.tolist() == [[True, True, True]]
    loss = torch.nn.functional.cross_entropy(logits, t([0]))
    assert float(loss) == pytest.approx(
        -4.0 + math.log(math.exp(4.0) + math.exp(2.0) / 0.2 + math.exp(1.0) / 0.8)
    )
    uncorrected, _ = sampled_softmax_logits([pos, sampled], temperature=0.5, logq_correction=False)
    torch.testing.assert_close(uncorrected, t([[4.0, 2.0, 1.0]]))


def test_masked_entries_are_minus_inf_and_hard_negatives_uncorrected():
    pos = LogitBlock(t([[1.0], [1.0]]), t([[True], [True]]))
    sampled = LogitBlock(t([[0.3], [0.3]]), t([[True], [False]]), torch.log(t([[0.5]])), draws=1)
    hard = LogitBlock(t([[0.7], [0.2]]), t([[True], [True]]))
    logits, mask = sampled_softmax_logits([pos, sampled, hard], temperature=1.0)
    assert mask.tolist() == [[True, True, True], [True, False, True]]
    assert logits[1, 1] == float("-inf")
    assert float(logits[0, 1]) == pytest.approx(0.3 - math.log(0.5))
    assert logits[:, 2].tolist() == pytest.approx([0.7, 0.2])


def _expected_partition(draws_of, blocks_for, score: list[float]) -> float:
    """E over every joint draw (exact enumeration) of sum_j exp(corrected logit_j)."""
    total = 0.0
    for draw in draws_of:
        prob, blocks = blocks_for(draw)
        logits, _ = sampled_softmax_logits(blocks, temperature=1.0)
        total += prob * float(torch.exp(logits.double()).sum())
    return total


def test_the_correction_makes_the_partition_estimate_unbiased():
    """Two i.i.d. draws from p: E[sum over draws of exp(s_j - log(2 p_j))] = sum_j exp(s_j); and
    one draw from p mixed with one in-batch draw from q (weights 1/2 each) is unbiased too."""
    score = [0.3, -1.0, 2.0, 0.7]
    p = [0.1, 0.2, 0.3, 0.4]
    q = [0.4, 0.4, 0.1, 0.1]
    z = sum(math.exp(s) for s in score)

    def block(items, probs):
        return LogitBlock(
            t([[score[i] for i in items]]),
            torch.ones(1, len(items), dtype=torch.bool),
            torch.log(t([[probs[i] for i in items]], dtype=torch.float64)),
            draws=len(items),
        )

    pairs = list(itertools.product(range(4), repeat=2))
    sampled_only = _expected_partition(pairs, lambda d: (p[d[0]] * p[d[1]], [block(d, p)]), score)
    assert sampled_only == pytest.approx(z, rel=1e-6)
    mixed = _expected_partition(
        pairs, lambda d: (p[d[0]] * q[d[1]], [block(d[:1], p), block(d[1:], q)]), score
    )
    assert mixed == pytest.approx(z, rel=1e-6)
    # without the correction the same estimate is biased (toward the popular items' scores)
    biased = sum(p[a] * p[b] * (math.exp(score[a]) + math.exp(score[b])) for a, b in pairs)
    assert abs(biased - z) > 0.5


# ----- in the model ---------------------------------------------------------------------


def test_interleaved_logq_loss_by_hand():
    m = model(temperature=0.5)
    uih = jf([[1, 2, 3], [4]])
    # query 0: positive 5, negatives 6, 5 (accidental hit); query 1: positive 7, negatives 8, 9
    cand = jf([[5, 6, 5], [7, 8, 9]])
    p = [0.05, 0.2, 0.1, 0.3]
    batch = JaggedBatch(uih, cand, t([1, 1]), "interleaved", neg_per_pos=2, neg_probability=t(p))
    out = {key: value.detach() for key, value in m(batch).items()}
    s = scores(m, uih, [0, 1], [[5, 6, 5], [7, 8, 9]])
    k, temp = 2, 0.5
    expected = [
        [s[0][0] / temp, s[0][1] / temp - math.log(k * p[0]), None],
        [s[1][0] / temp, s[1][1] / temp - math.log(k * p[2]), s[1][2] / temp - math.log(k * p[3])],
    ]
    assert out["mask"].tolist() == [[True, True, False], [True, True, True]]
    for q in range(2):
        for c in range(3):
            if expected[q][c] is None:
                assert out["logits"][q, c] == float("-inf")
            else:
                assert float(out["logits"][q, c]) == pytest.approx(expected[q][c], abs=1e-4)
    loss = (softmax_loss(expected[0]) + softmax_loss(expected[1])) / 2
    assert float(out["loss"]) == pytest.approx(loss, abs=1e-4)
    # the switch turns it off: the same batch then scores s / T only
    m.logq_correction = False
    plain = m(batch)["logits"].detach()
    assert float(plain[1, 2]) == pytest.approx(s[1][2] / temp, abs=1e-4)


def test_suffix_logq_corrects_shared_negatives_only():
    m = model(layout="suffix", temperature=1.0)
    uih = jf([[1, 2], [3]])
    # positives 4 | 5; shared negatives 6, 4; hard negative 7 for query 1
    cand = jf([[4], [5, 6, 4, 7]])
    batch = JaggedBatch(
        uih,
        cand,
        t([1, 1]),
        "suffix",
        num_shared_negatives=2,
        num_hard_negatives=1,
        hard_neg_indices=t([[1, 0]]),
        neg_probability=t([0.25, 0.5], dtype=torch.float64),
    )
    out = {key: value.detach() for key, value in m(batch).items()}
    s = scores(m, uih, [0, 1], [[4, 6, 4, 7], [5, 6, 4, 7]])
    k = 2
    expected = [
        [s[0][0], s[0][1] - math.log(k * 0.25), None, None],
        [s[1][0], s[1][1] - math.log(k * 0.25), s[1][2] - math.log(k * 0.5), s[1][3]],
    ]
    assert out["mask"].tolist() == [[True, True, False, False], [True, True, True, True]]
    got = out["logits"].tolist()
    for q in range(2):
        for c in range(4):
            if expected[q][c] is not None:
                assert got[q][c] == pytest.approx(expected[q][c], abs=1e-4)
    loss = (softmax_loss(expected[0]) + softmax_loss(expected[1])) / 2
    assert float(out["loss"]) == pytest.approx(loss, abs=1e-4)


def test_in_batch_negatives_mask_own_positive_and_correct_by_the_item_prior():
    m = model(in_batch_negatives=True, temperature=1.0)
    counts = np.array([0, 5, 1, 2, 3, 8, 1, 4, 2, 6, 1, 1, 7])
    m.set_item_prior(counts)
    total = counts.sum()
    uih = jf([[1, 2], [3], [4, 1], [2]])
    # positives 5, 7, 5, 9 (queries 0 and 2 share item 5); one sampled negative each
    positives, negatives, p = [5, 7, 5, 9], [6, 8, 10, 7], [0.1, 0.2, 0.3, 0.4]
    cand = jf([[pos, neg] for pos, neg in zip(positives, negatives, strict=True)])
    batch = JaggedBatch(uih, cand, t([1, 1, 1, 1]), "interleaved", neg_per_pos=1, neg_probability=t(p))
    out = {key: value.detach() for key, value in m(batch).items()}
    assert out["logits"].shape == (4, 1 + 1 + 4)
    in_batch_mask = out["mask"][:, 2:]
    # a query never scores its own positive as a negative: its own column and any equal item
    for q in range(4):
        for j in range(4):
            assert bool(in_batch_mask[q, j]) == (positives[j] != positives[q])
    assert torch.isinf(out["logits"][:, 2:][~in_batch_mask]).all()
    s = scores(
        m, uih, [0, 1, 2, 3], [[pos, neg, *positives] for pos, neg in zip(positives, negatives, strict=True)]
    )
    big_k = 1 + 3  # one sampled draw + Q - 1 = 3 in-batch draws per query
    for q in range(4):
        row = [s[q][0], s[q][1] - math.log(big_k * p[q])]
        for j in range(4):
            prior = counts[positives[j]] / total
            row.append(s[q][2 + j] - math.log(big_k * prior) if positives[j] != positives[q] else None)
        got = out["logits"][q].tolist()
        for c, want in enumerate(row):
            if want is not None:
                assert got[c] == pytest.approx(want, abs=1e-4), (q, c)
    hand_loss = np.mean(
        [
            softmax_loss(
                [s[q][0], s[q][1] - math.log(big_k * p[q])]
                + [
                    s[q][2 + j] - math.log(big_k * counts[positives[j]] / total)
                    for j in range(4)
                    if positives[j] != positives[q]
                ]
            )
            for q in range(4)
        ]
    )
    assert float(out["loss"]) == pytest.approx(hand_loss, abs=1e-4)


def test_in_batch_negatives_need_a_prior_that_counts_the_batch():
    m = model(in_batch_negatives=True)
    batch = JaggedBatch(jf([[1], [2]]), jf([[3, 4], [5, 6]]), t([1, 1]), "interleaved", neg_per_pos=1)
    with pytest.raises(NegseqError, match="needs the item prior: call HSTUMatch.set_item_prior"):
        m(batch)
    counts = np.ones(NUM_ITEMS + 1)
    counts[5] = 0
    m.set_item_prior(counts)
    with pytest.raises(NegseqError, match="item row 5 is a positive of this batch but has count 0"):
        m(batch)
    m.logq_correction = False  # uncorrected in-batch negatives need no prior
    assert torch.isfinite(m(batch)["loss"])
    with pytest.raises(NegseqError, match="counts must hold num_items \\+ 1 = 13 entries"):
        m.set_item_prior(np.ones(NUM_ITEMS))
    with pytest.raises(NegseqError, match=r"counts\[2\] = -1.0 is not a count"):
        m.set_item_prior(np.array([1, 1, -1] + [1] * 10))


def test_in_batch_and_logq_train_down_and_the_prior_is_checkpointed():
    from negseq.train.loop import train

    m = model(in_batch_negatives=True)
    m.set_item_prior(np.arange(NUM_ITEMS + 1) + 1)
    batch = JaggedBatch(
        jf([[1, 2], [3], [4, 5]]),
        jf([[6, 7], [8, 9], [10, 11]]),
        t([1, 1, 1]),
        "interleaved",
        neg_per_pos=1,
        neg_probability=t([0.05, 0.1, 0.2]),
    )
    report = train(m.train(), [batch] * 60, lr=1e-2)
    assert report.losses[-1] < 0.5 * report.losses[0]
    restored = model(in_batch_negatives=True)
    restored.load_state_dict(m.state_dict())
    torch.testing.assert_close(restored.item_log_prior, m.item_log_prior)


# ----- the batch field ------------------------------------------------------------------


def test_jagged_batch_checks_neg_probability():
    uih, cand = jf([[1], [2]]), jf([[3, 4, 5], [6, 7, 8]])

    def batch(p):
        return JaggedBatch(uih, cand, t([1, 1]), "interleaved", neg_per_pos=2, neg_probability=p)

    assert batch(t([0.1, 0.2, 0.3, 1.0])).to("cpu").neg_probability.tolist() == pytest.approx(
        [0.1, 0.2, 0.3, 1.0]
    )
    with pytest.raises(NegseqError, match=r"shape \(3,\), the interleaved layout has 4 sampled negatives"):
        batch(t([0.1, 0.2, 0.3]))
    with pytest.raises(NegseqError, match=r"neg_probability\[2\] = 0.0: a drawn negative's probability"):
        batch(t([0.1, 0.2, 0.0, 0.5]))
    with pytest.raises(NegseqError, match="must be float32 or float64"):
        batch(t([1, 1, 1, 1]))
    suffix = jf([[3], [4, 5, 6]])
    with pytest.raises(
        NegseqError, match=r"the suffix layout has 2 sampled negatives \(num_shared_negatives\)"
    ):
        JaggedBatch(uih, suffix, t([1, 1]), "suffix", num_shared_negatives=2, neg_probability=t([0.5]))


@pytest.mark.parametrize(
    "layout,objective", [("interleaved", "autoregressive"), ("suffix", "last"), ("suffix", "autoregressive")]
)
def test_in_batch_negatives_in_every_layout_and_objective(layout, objective):
    m = model(layout=layout, objective=objective, in_batch_negatives=True)
    m.set_item_prior(np.ones(NUM_ITEMS + 1))
    uih = jf([[1, 2], [3]])
    if objective == "autoregressive":  # one positive a history item: 3, 4 | 4
        positives, pos_lengths = [3, 4, 4], t([2, 1])
    else:  # the last position scores 5, 6 | 5
        positives, pos_lengths = [5, 6, 5], t([2, 1])
    rows = [positives[:2], positives[2:]]
    if layout == "interleaved":
        cand = jf([[rows[0][0], 9, rows[0][1], 9], [rows[1][0], 10]])  # one negative each
        batch = JaggedBatch(uih, cand, pos_lengths, layout, neg_per_pos=1, neg_probability=t([0.1, 0.2, 0.3]))
        width = 2
    else:
        cand = jf([rows[0], rows[1] + [9, 11]])
        batch = JaggedBatch(
            uih, cand, pos_lengths, layout, num_shared_negatives=2, neg_probability=t([0.25, 0.5])
        )
        width = 3
    out = m(batch)
    assert out["logits"].shape == (3, width + 3)
    in_batch = out["mask"][:, width:]
    expected = [[positives[j] != positives[q] for j in range(3)] for q in range(3)]
    assert in_batch.tolist() == expected
    assert torch.isfinite(out["loss"])
    out["loss"].backward()
    assert m.item_embedding.weight.grad is not None


# ----- a query's own row's positives (exclude = "user") ----------------------------------


def test_suffix_masks_each_querys_row_positives_and_corrects_by_hand():
    m = model(layout="suffix", objective="last", temperature=1.0, mask_row_positives=True)
    uih = jf([[1, 2], [3]])
    # row 0 holds positives 4, 6; row 1 holds 5; shared negatives 6, 5, 8 (drawn with no exclusion)
    cand = jf([[4, 6], [5, 6, 5, 8]])
    p = [0.25, 0.5, 0.125]
    batch = JaggedBatch(
        uih, cand, t([2, 1]), "suffix", num_shared_negatives=3, neg_probability=t(p, dtype=torch.float64)
    )
    out = {key: value.detach() for key, value in m(batch).items()}
    # query 0 (row 0, positive 4): 6 is row 0's other positive -> masked; 5 and 8 are negatives
    # query 1 (row 0, positive 6): 6 is its own positive -> masked; 5 and 8 are negatives
    # query 2 (row 1, positive 5): 5 is its own positive -> masked; 6 (row 0's) and 8 are negatives
    assert out["mask"].tolist() == [
        [True, False, True, True],
        [True, False, True, True],
        [True, True, False, True],
    ]
    s = scores(m, uih, [0, 0, 1], [[4, 6, 5, 8], [6, 6, 5, 8], [5, 6, 5, 8]])
    k = 3
    expected = [
        [s[0][0], None, s[0][2] - math.log(k * p[1]), s[0][3] - math.log(k * p[2])],
        [s[1][0], None, s[1][2] - math.log(k * p[1]), s[1][3] - math.log(k * p[2])],
        [s[2][0], s[2][1] - math.log(k * p[0]), None, s[2][3] - math.log(k * p[2])],
    ]
    got = out["logits"].tolist()
    for q in range(3):
        for c in range(4):
            if expected[q][c] is None:
                assert got[q][c] == float("-inf")
            else:
                assert got[q][c] == pytest.approx(expected[q][c], abs=1e-4)
    loss = sum(softmax_loss(row) for row in expected) / 3
    assert float(out["loss"]) == pytest.approx(loss, abs=1e-4)
    # without the switch only the accidental hits are masked
    m.mask_row_positives = False
    assert m(batch)["mask"].tolist() == [
        [True, True, True, True],
        [True, False, True, True],
        [True, True, False, True],
    ]


def test_interleaved_and_in_batch_mask_the_row_positives():
    m = model(temperature=1.0, objective="autoregressive", in_batch_negatives=True, mask_row_positives=True)
    m.set_item_prior(np.ones(NUM_ITEMS + 1))
    uih = jf([[1, 2], [3]])
    # row 0: positives 2, 7 (negatives 7 and 9: 7 is the row's other positive); row 1: positive 2
    # (negative 7: row 0's positive, a real negative for row 1)
    cand = jf([[2, 7, 9, 7, 9, 9], [2, 7, 7]])
    batch = JaggedBatch(uih, cand, t([2, 1]), "interleaved", neg_per_pos=2, neg_probability=t([0.1] * 6))
    mask = m(batch)["mask"]
    # columns: positive | own negatives (2) | in-batch: the positives 2, 7, 2
    assert mask.tolist() == [
        [True, False, True, False, False, False],  # row 0 query 0 (positive 2): 7 is row 0's
        [True, True, True, False, False, False],  # row 0 query 1 (positive 7, negatives 9, 9)
        [True, True, True, False, True, False],  # row 1 (positive 2): 7 is row 0's, a negative
    ]
    one = model(temperature=1.0, mask_row_positives=True)  # a single query, its own negatives
    single = JaggedBatch(jf([[1]]), jf([[2, 2, 3]]), t([1]), "interleaved", neg_per_pos=2)
    assert one(single)["mask"].tolist() == [[True, False, True]]
