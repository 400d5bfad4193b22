"""HSTUMatch: logit shapes and masks for both layouts and objectives, errors, overfitting."""

import pytest
import torch

from negseq.batch import JaggedBatch, JaggedFeature
from negseq.errors import NegseqError
from negseq.model.hstu_match import HSTUMatch, STUConfig
from negseq.train.loop import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


t = torch.tensor
NUM_ITEMS = 20


def jf(rows, timestamps=False):
    values = t([v for r in rows for v in r], dtype=torch.int64)
    offsets = t([0] + torch.tensor([len(r) for r in rows]).cumsum(0).tolist(), dtype=torch.int64)
    ts = torch.arange(values.numel(), dtype=torch.int64) * 100 if timestamps else None
    return JaggedFeature(values, offsets, ts)


def model(**kwargs):
    torch.manual_seed(0)
    defaults = dict(num_layers=2, max_seq_len=8, stu=STUConfig(num_heads=2, output_dropout_ratio=0.0))
    defaults.update(kwargs)
    return HSTUMatch(NUM_ITEMS, 16, input_dropout_ratio=0.0, **defaults)


def interleaved_last_batch():
    # rows: 2 positives, 0 positives, 1 positive; n = 2; row 1 has an empty history
    uih = jf([[1, 2, 3], [], [4, 5]], timestamps=True)
    cand = jf([[6, 7, 8, 9, 10, 9], [], [11, 12, 11]])  # last row: negative 11 == positive 11
    return JaggedBatch(uih, cand, t([2, 0, 1]), "interleaved", neg_per_pos=2)


def test_interleaved_last_shapes_and_masks():
    m = model(num_time_buckets=8)
    out = m(interleaved_last_batch())
    assert out["user_emb"].shape == (3, 16)
    assert torch.equal(out["user_emb"][1], torch.zeros(16))  # empty history: a zero row
    assert out["logits"].shape == (3, 3) and out["mask"].shape == (3, 3)
    assert out["query_rows"].tolist() == [0, 0, 2]
    assert out["mask"].tolist() == [[True, True, True], [True, True, False], [True, True, False]]
    assert torch.isinf(out["logits"][~out["mask"]]).all()
    assert torch.isfinite(out["logits"][out["mask"]]).all()
    # logits are cosine / temperature: the first query scores item 6 with row 0's user embedding
    item6 = m.item_embeddings(t([6]))[0]
    expected = (out["user_emb"][0] * item6).sum() / m.temperature
    torch.testing.assert_close(out["logits"][0, 0], expected)
    assert out["logits"][out["mask"]].abs().max() <= 1 / m.temperature + 1e-4
    out["loss"].backward()
    assert m.item_embedding.weight.grad is not None


def test_autoregressive_interleaved_scores_every_history_position():
    m = model(objective="autoregressive")
    uih = jf([[1, 2, 3], [], [4]])
    # next items 2, 3, 13 for row 0 and 14 for row 2, one negative each
    cand = jf([[2, 15, 3, 16, 13, 13], [], [14, 17]])
    out = m(JaggedBatch(uih, cand, t([3, 0, 1]), "interleaved", neg_per_pos=1))
    assert out["logits"].shape == (4, 2)
    assert out["query_rows"].tolist() == [0, 0, 0, 2]
    assert out["mask"][:, 1].tolist() == [True, True, False, True]
    seq = m.eval().encode_history(uih)
    m.train()
    pos = m.item_embeddings(t([2, 3, 13, 14]))
    torch.testing.assert_close(out["logits"][:, 0], (seq * pos).sum(-1) / m.temperature)


def test_autoregressive_needs_one_positive_per_history_item():
    m = model(objective="autoregressive")
    batch = JaggedBatch(jf([[1, 2], [3]]), jf([[4, 5], [6, 7]]), t([1, 1]), "interleaved", neg_per_pos=1)
    with pytest.raises(NegseqError, match="row 0 has 1 positives but 2 history items"):
        m(batch)


def suffix_batch():
    uih = jf([[1, 2, 3], [4], []])
    # positives 5,6 | 7 | 8 ; shared negatives 9, 5, 10 ; hard negatives 11, 12, 7
    cand = jf([[5, 6], [7], [8, 9, 5, 10, 11, 12, 7]])
    hard_index = t([[0, 0], [0, 1], [2, 1]], dtype=torch.int32)
    return JaggedBatch(
        uih,
        cand,
        t([2, 1, 1]),
        "suffix",
        num_shared_negatives=3,
        num_hard_negatives=3,
        hard_neg_indices=hard_index,
    )


@pytest.mark.parametrize("objective", ["last", "autoregressive"])
def test_suffix_shapes_and_masks(objective):
    m = model(layout="suffix", objective=objective)
    batch = suffix_batch()
    if objective == "autoregressive":  # one positive per history item: 3, 1, 0
        batch = JaggedBatch(
            batch.uih,
            jf([[5, 6, 13], [7], [9, 5, 10, 11, 12, 7]]),
            t([3, 1, 0]),
            "suffix",
            num_shared_negatives=3,
            num_hard_negatives=3,
            hard_neg_indices=t([[0, 0], [0, 1], [3, 1]]),
        )
    out = m(batch)
    q = 4
    assert out["logits"].shape == (q, 1 + 3 + 2)
    mask = out["mask"].tolist()
    if objective == "last":
        # positives 5, 6, 7, 8; shared 9, 5, 10 (5 = query 0 positive); hard 11, 12 (query 0), 7
        assert mask == [
            [True, True, False, True, True, True],
            [True, True, True, True, False, False],
            [True, True, True, True, False, False],  # hard 7 is query 2's own positive
            [True, True, True, True, False, False],
        ]
        assert out["query_rows"].tolist() == [0, 0, 1, 2]
    else:
        assert mask[3] == [
            True,
            True,
            True,
            True,
            False,
            False,
        ]  # query 3 (row 1, pos 7): hard 7 masked
        assert mask[0] == [True, True, False, True, True, True]
    assert torch.isinf(out["logits"][~out["mask"]]).all()
    out["loss"].backward()


def test_suffix_rejects_bad_rows_and_hard_indices():
    m = model(layout="suffix")
    good = suffix_batch()
    bad_rows = JaggedBatch(
        good.uih,
        jf([[5], [6, 7], [8, 9, 5, 10, 11, 12, 7]]),
        t([2, 1, 1]),
        "suffix",
        num_shared_negatives=3,
        num_hard_negatives=3,
        hard_neg_indices=good.hard_neg_indices,
    )
    with pytest.raises(NegseqError, match="candidate row 0 holds 1 ids, expected 2"):
        m(bad_rows)
    bad_hard = JaggedBatch(
        good.uih,
        good.candidate,
        good.cand_pos_lengths,
        "suffix",
        num_shared_negatives=3,
        num_hard_negatives=3,
        hard_neg_indices=t([[0, 0], [0, 1], [9, 0]]),
    )
    with pytest.raises(NegseqError, match=r"query rows must lie in \[0, 4\)"):
        m(bad_hard)


def test_layout_mismatch_and_too_long_history():
    with pytest.raises(NegseqError, match="built for 'suffix'"):
        model(layout="suffix")(interleaved_last_batch())
    long = JaggedBatch(jf([list(range(1, 11))]), jf([[1, 2]]), t([1]), "interleaved", neg_per_pos=1)
    with pytest.raises(NegseqError, match="uih row 0 holds 10 items, more than max_seq_len 8"):
        model()(long)


def test_sample_weights_are_repeated_per_positive():
    m = model().eval()
    batch = interleaved_last_batch()
    out = m(batch, sample_weights=t([1.0, 5.0, 3.0]))
    per_query = torch.nn.functional.cross_entropy(
        out["logits"], torch.zeros(3, dtype=torch.int64), reduction="none"
    )
    torch.testing.assert_close(out["loss"], (per_query * t([1.0, 1.0, 3.0])).sum() / 5.0)


def test_no_queries_gives_a_zero_loss_with_gradients():
    m = model()
    out = m(JaggedBatch(jf([[1, 2]]), jf([[]]), t([0]), "interleaved", neg_per_pos=3))
    assert out["logits"].shape == (0, 4)
    assert float(out["loss"].detach()) == 0.0
    out["loss"].backward()


def test_contextual_prefix_and_actions():
    m = model(contextual_vocab_size=5, contextual_seq_len=2, num_action_types=3, num_time_buckets=4)
    uih = JaggedFeature(t([1, 2, 3]), t([0, 2, 2, 3]), timestamps=t([5, 60, 7]), actions=t([1, 6, 3]))
    ctx = jf([[0, 1], [2, 3], [4, 4]])
    batch = JaggedBatch(
        uih, jf([[4, 5], [], [6, 7]]), t([1, 0, 1]), "interleaved", neg_per_pos=1, contextual=ctx
    )
    out = m(batch)
    assert out["logits"].shape == (2, 2)
    assert torch.equal(out["user_emb"][1], torch.zeros(16))
    m.eval()
    # actions change the embedding; the padded tower agrees with the jagged one
    uih2 = JaggedFeature(uih.values, uih.offsets, uih.timestamps, actions=t([0, 6, 3]))
    assert not torch.allclose(m.user_embeddings(uih, ctx)[0], m.user_embeddings(uih2, ctx)[0])
    padded = m.user_embeddings_padded(
        t([[1, 2], [0, 0], [3, 0]]),
        t([2, 0, 1]),
        timestamps=t([[5, 60], [0, 0], [7, 0]]),
        actions=t([[1, 6], [0, 0], [3, 0]]),
        contextual_ids=t([[0, 1], [2, 3], [4, 4]]),
    )
    torch.testing.assert_close(padded, m.user_embeddings(uih, ctx))
    bad_ctx = jf([[0], [2, 3], [4, 4]])
    with pytest.raises(NegseqError, match="contextual feature row 0 holds 1 ids, contextual_seq_len is 2"):
        m.user_embeddings(uih, bad_ctx)


def test_padded_user_tower_matches_jagged():
    m = model(num_time_buckets=8).eval()
    uih = jf([[1, 2, 3], [], [4, 5]], timestamps=True)
    rows = t([[1, 2, 3], [0, 0, 0], [4, 5, 0]])
    ts = t([[0, 100, 200], [0, 0, 0], [300, 400, 0]])
    torch.testing.assert_close(m.user_embeddings_padded(rows, t([3, 0, 2]), ts), m.user_embeddings(uih))


@pytest.mark.parametrize(
    "layout,objective",
    [("interleaved", "last"), ("interleaved", "autoregressive"), ("suffix", "last")],
)
def test_overfits_a_tiny_batch(layout, objective):
    m = model(layout=layout, objective=objective, temperature=0.05)
    if layout == "suffix":  # every row with a history (an empty one scores all zeros)
        good = suffix_batch()
        batch = JaggedBatch(
            jf([[1, 2, 3], [4], [19]]),
            good.candidate,
            good.cand_pos_lengths,
            "suffix",
            num_shared_negatives=3,
            num_hard_negatives=3,
            hard_neg_indices=good.hard_neg_indices,
        )
    elif objective == "last":
        batch = interleaved_last_batch()
        batch = JaggedBatch(
            batch.uih,
            jf([[6, 7, 8, 9, 10, 13], [], [11, 12, 14]]),
            batch.cand_pos_lengths,
            "interleaved",
            neg_per_pos=2,
        )
    else:
        batch = JaggedBatch(
            jf([[1, 2, 3], [4]]),
            jf([[2, 15, 3, 16, 13, 17], [14, 18]]),
            t([3, 1]),
            "interleaved",
            neg_per_pos=1,
        )
    first = float(m(batch)["loss"].detach())
    report = train(m, [batch] * 150, lr=1e-2)
    assert report.steps == 150 and report.rows == 150 * batch.batch_size
    assert first > 0.3
    assert report.losses[-1] < 0.01
