"""HSTU retrieval model: a user tower over jagged history, an item tower, sampled-softmax loss.

User tower: item embedding -> `UIHPreprocessor` (+ contextual prefix, actions) ->
`HSTUPositionalEncoder` -> dropout -> `STUStack` -> L2 norm (cosine). Item tower: the same
item embedding table -> Linear -> LayerNorm (-> L2 norm for cosine).

Who scores what (the query embedding of each positive):
- `objective="last"` (TorchEasyRec #462): the row's last history position scores each of
  the row's `cand_pos_lengths[i]` positives and their negatives.
- `objective="autoregressive"` (HSTU paper): history position j scores the row's j-th
  positive (the next item), so the candidate row must hold one positive per history item.

Which negatives: interleaved -> each positive's own n negatives, logits [Q, 1+n]; suffix ->
the M shared negatives for every query plus its hard negatives scattered by
`hard_neg_indices` (query = positive index in [0, Q)), logits [Q, 1+M+Hmax]. With
`in_batch_negatives`, Q more columns: column j is query j's positive, a negative for every
other query. Entries that do not exist, and negatives equal to the query's positive
(accidental hits, the query's own column among the in-batch ones included), are masked to
-inf; `mask` says which entries are real. With `mask_row_positives` (the job's
`exclude = "user"`), a sampled or in-batch negative that is any positive of the query's own row
(its user's items) is masked as well, per query: in the suffix layout every query scores every
shared negative, so no draw-time exclusion can keep each user's own items out of its negatives.
Logits are divided by the temperature and, with `logq_correction`, sampled and in-batch
negatives are corrected by their sampling probability (`negseq.model.sampled_softmax`: the
batch's `neg_probability`, the model's `item_log_prior`). Loss: softmax cross-entropy, label 0.

The padded user tower (`user_embeddings_padded`, what export traces) keeps each row's most
recent `max_seq_len` items of a longer history; the jagged tower refuses a longer row (the
batch builder truncates).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from negseq.batch import JaggedBatch, JaggedFeature
from negseq.errors import NegseqError
from negseq.model.encoders import HSTUPositionalEncoder, L2Norm, UIHPreprocessor
from negseq.model.jagged import row_slots
from negseq.model.ops import Kernel
from negseq.model.sampled_softmax import LogitBlock, sampled_softmax_logits
from negseq.model.stu import STULayer, STUStack

Similarity = Literal["cosine", "inner_product"]
_DENSE_SCORE_LIMIT = 1 << 25  # most query x corpus scores computed at once (128 MiB of float32)
Objective = Literal["last", "autoregressive"]


@dataclass(frozen=True)
class STUConfig:
    """Per-layer STU settings; hidden_dim / attention_dim default to embedding_dim // num_heads.

    `scaling_seqlen=-1` means max_seq_len (+ contextual tokens) in HSTUMatch.
    """

    num_heads: int = 1
    hidden_dim: int | None = None
    attention_dim: int | None = None
    output_dropout_ratio: float = 0.3
    attn_alpha: float | None = None
    max_attn_len: int = 0
    scaling_seqlen: int = -1
    kernel: Kernel | str = "auto"  # Triton on CUDA (when triton imports), the PyTorch reference elsewhere


def _rows_of(lengths: torch.Tensor) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths)


class HSTUMatch(nn.Module):
    """Two-tower HSTU retrieval model. Item rows are dense: 1..num_items, 0 = unknown / padding."""

    item_log_prior: torch.Tensor

    def __init__(
        self,
        num_items: int,
        embedding_dim: int,
        stu: STUConfig | None = None,
        num_layers: int = 2,
        max_seq_len: int = 200,
        temperature: float = 0.05,
        similarity: Similarity = "cosine",
        layout: Literal["interleaved", "suffix"] = "interleaved",
        objective: Objective = "last",
        input_dropout_ratio: float = 0.2,
        num_time_buckets: int = 0,
        num_action_types: int = 0,
        contextual_vocab_size: int = 0,
        contextual_seq_len: int = 0,
        logq_correction: bool = True,
        in_batch_negatives: bool = False,
        mask_row_positives: bool = False,
    ) -> None:
        super().__init__()
        if similarity not in ("cosine", "inner_product"):
            raise ValueError(f"similarity must be 'cosine' or 'inner_product', got {similarity!r}")
        if layout not in ("interleaved", "suffix"):
            raise ValueError(f"layout must be 'interleaved' or 'suffix', got {layout!r}")
        if objective not in ("last", "autoregressive"):
            raise ValueError(f"objective must be 'last' or 'autoregressive', got {objective!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        stu = stu or STUConfig()
        # a fixed N (not the batch's max length) keeps a user's embedding independent of
        # which other users share its batch: training, evaluate, predict and export agree
        scaling_seqlen = stu.scaling_seqlen if stu.scaling_seqlen > 0 else max_seq_len + contextual_seq_len
        self.num_items = num_items
        self.embedding_dim = embedding_dim
        self.max_seq_len = max_seq_len
        self.temperature = temperature
        self.similarity = similarity
        self.layout = layout
        self.objective = objective
        self.contextual_seq_len = contextual_seq_len
        self.logq_correction = logq_correction
        self.in_batch_negatives = in_batch_negatives
        self.mask_row_positives = mask_row_positives
        # log training frequency of each item row (in-batch negatives' logQ); NaN until set
        self.register_buffer("item_log_prior", torch.full((num_items + 1,), float("nan")))
        # every rank sets the same prior: DDP need not broadcast it (num_items floats) each step
        self._ddp_params_and_buffers_to_ignore = ["item_log_prior"]
        self.item_embedding = nn.Embedding(num_items + 1, embedding_dim, padding_idx=0)
        nn.init.normal_(self.item_embedding.weight[1:], std=0.02)
        self.preprocessor = UIHPreprocessor(
            embedding_dim,
            embedding_dim,
            num_action_types=num_action_types,
            contextual_vocab_size=contextual_vocab_size,
            contextual_seq_len=contextual_seq_len,
        )
        self.positional = HSTUPositionalEncoder(
            max_seq_len + contextual_seq_len + 1,
            embedding_dim,
            num_time_buckets=num_time_buckets,
            contextual_seq_len=contextual_seq_len,
        )
        self.input_dropout = nn.Dropout(input_dropout_ratio)
        self.stu = STUStack(
            [
                STULayer(
                    embedding_dim,
                    stu.num_heads,
                    stu.hidden_dim or embedding_dim // stu.num_heads,
                    stu.attention_dim or embedding_dim // stu.num_heads,
                    output_dropout_ratio=stu.output_dropout_ratio,
                    attn_alpha=stu.attn_alpha,
                    max_attn_len=stu.max_attn_len,
                    contextual_seq_len=contextual_seq_len,
                    scaling_seqlen=scaling_seqlen,
                    kernel=stu.kernel,
                )
                for _ in range(num_layers)
            ]
        )
        self.user_norm = L2Norm() if similarity == "cosine" else nn.Identity()
        self.item_tower = nn.Sequential(
            nn.Linear(embedding_dim, embedding_dim),
            nn.LayerNorm(embedding_dim),
            L2Norm() if similarity == "cosine" else nn.Identity(),
        )

    # ----- towers -------------------------------------------------------------------------
    def encode_history(self, uih: JaggedFeature, contextual: JaggedFeature | None = None) -> torch.Tensor:
        """The user tower's output at every history position: jagged [L, D] on uih.offsets."""
        lengths = uih.lengths
        if lengths.numel() and int(lengths.max()) > self.max_seq_len:
            row = int(torch.argmax(lengths))
            raise NegseqError(
                f"uih row {row} holds {int(lengths[row])} items, more than max_seq_len "
                f"{self.max_seq_len}: truncate history when building the batch"
            )
        x, offsets = self.preprocessor(
            self.item_embedding(uih.values),
            uih.offsets,
            actions=uih.actions,
            contextual_ids=None if contextual is None else contextual.values,
            contextual_offsets=None if contextual is None else contextual.offsets,
        )
        timestamps = uih.timestamps
        # where the history values sit among the contextual prefixes
        slots = row_slots(uih.offsets, self.contextual_seq_len) if self.contextual_seq_len else None
        if slots is not None and timestamps is not None:
            timestamps = timestamps.new_zeros(x.shape[0]).index_copy(0, slots, timestamps)
        x = self.input_dropout(self.positional(x, offsets, timestamps))
        max_len = int((offsets[1:] - offsets[:-1]).max()) if lengths.numel() else 0
        x = self.stu(x, offsets, max_len)
        if slots is not None:
            x = x[slots]
        return self.user_norm(x)

    def user_embeddings(self, uih: JaggedFeature, contextual: JaggedFeature | None = None) -> torch.Tensor:
        """[B, D]: the last history position of each row; a zero row for an empty history."""
        return self._last_position(self.encode_history(uih, contextual), uih.offsets)

    @staticmethod
    def _last_position(seq: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        lengths = offsets[1:] - offsets[:-1]
        out = seq.new_zeros(lengths.numel(), seq.shape[-1])
        nonempty = torch.nonzero(lengths > 0).flatten()
        return out.index_copy(0, nonempty, seq[offsets[1:][nonempty] - 1])

    def item_embeddings(self, rows: torch.Tensor) -> torch.Tensor:
        """Item tower over dense item rows [...]; returns [..., D]."""
        return self.item_tower(self.item_embedding(rows))

    def user_embeddings_padded(
        self,
        item_rows: torch.Tensor,
        lengths: torch.Tensor,
        timestamps: torch.Tensor | None = None,
        actions: torch.Tensor | None = None,
        contextual_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The user tower on a right-padded batch (item_rows [B, N], lengths [B]) -> [B, D].

        A row longer than `max_seq_len` keeps its most recent `max_seq_len` items (the jagged
        tower refuses it instead). Plain static-shape tensor ops, so `torch.export` handles a
        dynamic B and any N.
        """
        item_rows = self._most_recent(item_rows, lengths)
        timestamps = None if timestamps is None else self._most_recent(timestamps, lengths)
        actions = None if actions is None else self._most_recent(actions, lengths)
        lengths = torch.clamp(lengths, max=self.max_seq_len)
        x, total = self.preprocessor.forward_padded(
            self.item_embedding(item_rows), lengths, actions=actions, contextual_ids=contextual_ids
        )
        if self.contextual_seq_len and timestamps is not None:
            timestamps = F.pad(timestamps, (self.contextual_seq_len, 0))
        x = self.input_dropout(self.positional.forward_padded(x, total, timestamps))
        x = self.user_norm(self.stu.forward_padded(x, total))
        last = torch.clamp(total - 1, min=0).view(-1, 1, 1).expand(-1, 1, x.shape[-1])
        out = torch.gather(x, 1, last).squeeze(1)
        return out * (lengths > 0).to(out.dtype).unsqueeze(1)

    def _most_recent(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Right-padded x [B, N] -> [B, max_seq_len]: each row's last max_seq_len values (of its
        `lengths`), then padding. The width is max_seq_len whatever N is: min(N, max_seq_len)
        would be a symbolic min that torch.export cannot trace through."""
        width = self.max_seq_len
        start = torch.clamp(lengths - width, min=0).view(-1, 1)
        index = start + torch.arange(width, device=x.device).view(1, -1)
        return torch.gather(F.pad(x, (0, width)), 1, index)

    # ----- training -----------------------------------------------------------------------
    def set_item_prior(self, counts: np.ndarray | torch.Tensor) -> None:
        """Set `item_log_prior` from training interaction counts per dense item row
        ([num_items + 1], row 0 the unknown item; e.g. `metrics.item_counts` of the training
        table): the probability q_j with which a batch's positive is item j, used by the
        in-batch negatives' logQ correction."""
        counts_t = torch.as_tensor(counts).to("cpu", torch.float64)
        if counts_t.shape != (self.num_items + 1,):
            raise NegseqError(
                f"set_item_prior: counts must hold num_items + 1 = {self.num_items + 1} entries "
                f"(one per dense item row, row 0 the unknown item), got shape {tuple(counts_t.shape)}"
            )
        bad = torch.nonzero(~torch.isfinite(counts_t) | (counts_t < 0)).flatten()
        if bad.numel():
            row = int(bad[0])
            raise NegseqError(f"set_item_prior: counts[{row}] = {float(counts_t[row])} is not a count >= 0")
        total = float(counts_t.sum())
        if total <= 0:
            raise NegseqError("set_item_prior: every count is 0, there is no training frequency")
        with torch.no_grad():
            self.item_log_prior.copy_(torch.log(counts_t / total).to(self.item_log_prior.dtype))

    def forward(
        self, batch: JaggedBatch, sample_weights: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """user_emb [B, D], logits [Q, K] (float32: / temperature, logQ-corrected, -inf off the
        mask), mask [Q, K], query_rows [Q], loss."""
        if batch.layout != self.layout:
            raise NegseqError(f"batch layout {batch.layout!r} but the model was built for {self.layout!r}")
        cand_pos_lengths = batch.cand_pos_lengths.to(torch.int64)
        seq = self.encode_history(batch.uih, batch.contextual)
        user_emb = self._last_position(seq, batch.uih.offsets)
        query_rows = _rows_of(cand_pos_lengths)
        if self.objective == "last":
            query = user_emb[query_rows]
        else:
            uih_lengths = batch.uih.lengths
            bad = torch.nonzero(cand_pos_lengths != uih_lengths).flatten()
            if bad.numel():
                row = int(bad[0])
                raise NegseqError(
                    f"autoregressive objective: row {row} has {int(cand_pos_lengths[row])} "
                    "positives "
                    f"but {int(uih_lengths[row])} history items (needs one positive a history item)"
                )
            query = seq
        if self.layout == "interleaved":
            pos_ids, blocks = self._interleaved_blocks(batch, query, query_rows)
        else:
            pos_ids, blocks = self._suffix_blocks(batch, query, query_rows, cand_pos_lengths)
        if self.in_batch_negatives:
            blocks.append(self._in_batch_block(query, pos_ids, query_rows, batch.batch_size))
        logits, mask = sampled_softmax_logits(blocks, self.temperature, logq_correction=self.logq_correction)
        loss = self.loss(logits, cand_pos_lengths, sample_weights)
        return {
            "user_emb": user_emb,
            "logits": logits,
            "mask": mask,
            "query_rows": query_rows,
            "loss": loss,
        }

    def _item_lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Item tower for many ids: over the whole table once when that is cheaper."""
        if ids.numel() > self.num_items + 1:
            return self.item_embeddings(torch.arange(self.num_items + 1, device=ids.device))[ids]
        return self.item_embeddings(ids)

    @staticmethod
    def _sampled_log_prob(batch: JaggedBatch, shape: tuple[int, int]) -> torch.Tensor | None:
        """log p of the batch's sampled negatives as a [Q, n] (interleaved) or [1, M] block."""
        if batch.neg_probability is None:
            return None
        return torch.log(batch.neg_probability.to(torch.float64)).view(shape)

    def _interleaved_blocks(
        self, batch: JaggedBatch, query: torch.Tensor, query_rows: torch.Tensor
    ) -> tuple[torch.Tensor, list[LogitBlock]]:
        """(positive ids [Q], [positive, sampled negatives]): each query's own n negatives."""
        num_queries, n = query.shape[0], batch.neg_per_pos
        cand = batch.candidate.values.view(num_queries, 1 + n)
        corpus = self.num_items + 1
        if cand.numel() > corpus and num_queries * corpus <= _DENSE_SCORE_LIMIT:
            # small corpus: one GEMM against every item, then pick the candidates' columns
            # (several times faster on CPU than gathering Q*(1+n) embedding rows)
            all_items = self.item_embeddings(torch.arange(corpus, device=cand.device))
            scores = (query @ all_items.T).gather(1, cand)
        else:
            scores = torch.einsum("qd,qkd->qk", query, self._item_lookup(cand))
        pos_ids, neg_ids = cand[:, 0], cand[:, 1:]
        return pos_ids, [
            LogitBlock(scores[:, :1], torch.ones_like(scores[:, :1], dtype=torch.bool)),
            LogitBlock(
                scores[:, 1:],
                (neg_ids != pos_ids.unsqueeze(1))
                & self._not_row_positive(neg_ids, pos_ids, query_rows, batch.batch_size),
                self._sampled_log_prob(batch, (num_queries, n)),
                n,
            ),
        ]

    def _suffix_blocks(
        self,
        batch: JaggedBatch,
        query: torch.Tensor,
        query_rows: torch.Tensor,
        cand_pos_lengths: torch.Tensor,
    ) -> tuple[torch.Tensor, list[LogitBlock]]:
        """(positive ids [Q], [positive, shared negatives, hard negatives])."""
        values, offsets = batch.candidate.values, batch.candidate.offsets
        num_shared, num_hard = batch.num_shared_negatives, batch.num_hard_negatives
        expected = cand_pos_lengths.clone()
        if expected.numel():
            expected[-1] += num_shared + num_hard
        bad = torch.nonzero(batch.candidate.lengths != expected).flatten()
        if bad.numel():
            row = int(bad[0])
            raise NegseqError(
                f"suffix layout: candidate row {row} holds {int(batch.candidate.lengths[row])} "
                f"ids, expected {int(expected[row])} (positives, then shared and hard negatives "
                "in the last row)"
            )
        num_queries = query.shape[0]
        pos_starts = torch.cumsum(cand_pos_lengths, 0) - cand_pos_lengths
        pos_index = (
            offsets[query_rows] + torch.arange(num_queries, device=values.device) - pos_starts[query_rows]
        )
        pos_ids = values[pos_index]
        shared_ids = values[values.numel() - num_hard - num_shared : values.numel() - num_hard]
        hard_ids = values[values.numel() - num_hard :]
        pos_score = (query * self._item_lookup(pos_ids)).sum(-1, keepdim=True)
        return pos_ids, [
            LogitBlock(pos_score, torch.ones_like(pos_score, dtype=torch.bool)),
            LogitBlock(
                query @ self._item_lookup(shared_ids).T,
                (shared_ids.unsqueeze(0) != pos_ids.unsqueeze(1))
                & self._not_row_positive(shared_ids.unsqueeze(0), pos_ids, query_rows, batch.batch_size),
                self._sampled_log_prob(batch, (1, num_shared)),
                num_shared,
            ),
            self._hard_block(batch, query, pos_ids, hard_ids),
        ]

    def _hard_block(
        self, batch: JaggedBatch, query: torch.Tensor, pos_ids: torch.Tensor, hard_ids: torch.Tensor
    ) -> LogitBlock:
        """Hard negatives scattered to [Q, Hmax] by (query, offset); absent entries masked."""
        num_queries = query.shape[0]
        if hard_ids.numel() == 0:
            empty = query.new_zeros(num_queries, 0)
            return LogitBlock(empty, empty.to(torch.bool))
        index = batch.hard_neg_indices
        if index is None or index.shape != (hard_ids.numel(), 2):
            raise NegseqError(
                f"suffix layout: {hard_ids.numel()} hard negatives need hard_neg_indices of shape "
                f"[{hard_ids.numel()}, 2], got {None if index is None else tuple(index.shape)}"
            )
        index = index.to(torch.int64)
        if int(index[:, 0].min()) < 0 or int(index[:, 0].max()) >= num_queries or int(index[:, 1].min()) < 0:
            raise NegseqError(
                f"hard_neg_indices query rows must lie in [0, {num_queries}) and offsets be >= 0, "
                f"got rows [{int(index[:, 0].min())}, {int(index[:, 0].max())}]"
            )
        width = int(index[:, 1].max()) + 1
        score = (query[index[:, 0]] * self._item_lookup(hard_ids)).sum(-1)
        scores = query.new_zeros(num_queries, width).index_put((index[:, 0], index[:, 1]), score)
        mask = torch.zeros(num_queries, width, dtype=torch.bool, device=query.device)
        mask[index[:, 0], index[:, 1]] = hard_ids != pos_ids[index[:, 0]]
        return LogitBlock(scores, mask)

    def _in_batch_block(
        self, query: torch.Tensor, pos_ids: torch.Tensor, query_rows: torch.Tensor, num_rows: int
    ) -> LogitBlock:
        """Every query's positive as a negative of every other query: [Q, Q], column j = query
        j's positive, masked where it equals the row's own positive (the diagonal included) and,
        with `mask_row_positives`, where it is a positive of the query's own row."""
        log_prob = None
        if self.logq_correction:
            log_prob = self.item_log_prior[pos_ids].unsqueeze(0)
            bad = torch.nonzero(~torch.isfinite(log_prob[0])).flatten()
            if bad.numel():
                row = int(pos_ids[bad[0]])
                if bool(torch.isnan(self.item_log_prior).all()):
                    raise NegseqError(
                        "in_batch_negatives with logq_correction needs the item prior: call "
                        "HSTUMatch.set_item_prior(training counts per item row) before training"
                    )
                raise NegseqError(
                    f"in-batch negatives: item row {row} is a positive of this batch but has count 0 "
                    "in the item prior (set_item_prior): the prior must count the training data"
                )
        return LogitBlock(
            query @ self._item_lookup(pos_ids).T,
            (pos_ids.unsqueeze(0) != pos_ids.unsqueeze(1))
            & self._not_row_positive(pos_ids.unsqueeze(0), pos_ids, query_rows, num_rows),
            log_prob,
            max(pos_ids.numel() - 1, 0),
        )

    def _not_row_positive(
        self, ids: torch.Tensor, pos_ids: torch.Tensor, query_rows: torch.Tensor, num_rows: int
    ) -> torch.Tensor | bool:
        """With `mask_row_positives`, bool [Q, n]: False where a negative is one of the batch's
        positives (`pos_ids`, of rows `query_rows`) of its query's own row; True without it.
        `ids` [Q, n] are each query's own negatives; [1, n] are shared by every query, checked once
        for each of the `num_rows` rows and spread to the row's queries."""
        if not self.mask_row_positives:
            return True
        width = self.num_items + 1
        own = query_rows * width + pos_ids  # (row, item) of every positive
        if ids.shape[0] == 1:  # also right for one query's own negatives
            rows = torch.arange(num_rows, device=ids.device).unsqueeze(1)
            return ~torch.isin(rows * width + ids, own)[query_rows]
        return ~torch.isin(query_rows.unsqueeze(1) * width + ids, own)

    @staticmethod
    def loss(
        logits: torch.Tensor,
        cand_pos_lengths: torch.Tensor,
        sample_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Softmax cross-entropy, label 0; row weights [B] are repeated over each row's queries."""
        if logits.shape[0] == 0:
            return logits.sum() * 0.0
        per_query = F.cross_entropy(
            logits, logits.new_zeros(logits.shape[0], dtype=torch.int64), reduction="none"
        )
        if sample_weights is None:
            return per_query.mean()
        weights = torch.repeat_interleave(sample_weights.to(per_query.dtype), cand_pos_lengths)
        return (per_query * weights).sum() / weights.sum().clamp(min=1e-12)
