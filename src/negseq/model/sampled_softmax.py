"""Sampled softmax done right (DESIGN §6): logQ correction, accidental hits, in-batch negatives.

The full softmax loss of a query, `-s_pos + log Z` with `Z = sum_j exp(s_j)` over the whole
corpus (s = score / temperature), needs every item. Sampled softmax keeps the positive's
own term and estimates the rest of Z from a few negatives. When a query's k negatives are
independent draws from a distribution p (one draw picks item j with probability p_j), item
j is drawn k p_j times in expectation, so

    Z_hat = exp(s_pos) + sum over drawn j != pos of exp(s_j) / (k p_j)
          = exp(s_pos) + sum over drawn j != pos of exp(s_j - log(k p_j))

has expectation exp(s_pos) + sum_{j != pos} exp(s_j) = Z: importance sampling of the
partition function (Bengio & Senecal, "Quick training of probabilistic neural nets by
importance sampling", AISTATS 2003; "Adaptive importance sampling to accelerate training
of a neural probabilistic language model", IEEE TNN 2008). Hence the logQ correction:
each sampled negative's logit gets `-log(k p_j)`, the positive none. This is TensorFlow's
`sampled_softmax_loss` (`_compute_sampled_logits` with `subtract_log_q=True`), which
subtracts the log of the expected count `k p`. Uncorrected, a popular item (drawn often)
is pushed down in many more queries than its share of Z, so the model learns to demote
popularity instead of ranking. `p` must be the probability of one draw as the sampler
drew (after any exclusion renormalised it); for a sampler that draws without replacement
`k p` is the first-order expected count.

Accidental hits: a negative equal to the query's own positive is masked (TensorFlow's
`remove_accidental_hits`), so the estimate covers the other items and the positive enters
once, exactly. Hard negatives are not drawn from a known distribution and stay uncorrected.

In-batch negatives (Yi et al., "Sampling-bias-corrected neural modeling for large corpus
item recommendations", RecSys 2019): every other query's positive in the batch is a
negative. Those positives are draws from the training data, item j with probability q_j
(its training frequency: the model's item prior), m = Q - 1 of them per query, so alone
they get `-log(m q_j)`. Mixed with k sampled negatives (mixed negative sampling, Yang et
al., WWW 2020), the two estimates of Z are averaged with weights k/K and m/K, K = k + m,
which is the same as giving every corrected negative `-log(K * its source's probability)`:
sampled `-log(K p_j)`, in-batch `-log(K q_j)`. Each part is unbiased, so the mix is, and
with one source it is the `-log(k p_j)` above. A source given without probabilities is
left uncorrected and does not count in K.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LogitBlock:
    """Columns of a query x candidate logit matrix that come from one source.

    `scores` [Q, n]: similarities before the temperature; `mask` (broadcasts to [Q, n]):
    True where the entry is a real candidate; `log_prob` (broadcasts to [Q, n]): log of the
    probability with which one draw of this source picks the entry's item, None for entries
    that are not corrected (the positive, hard negatives); `draws`: how many draws of this
    source each query got (the k or m of the module docstring).
    """

    scores: torch.Tensor
    mask: torch.Tensor
    log_prob: torch.Tensor | None = None
    draws: int = 0


def sampled_softmax_logits(
    blocks: Sequence[LogitBlock], temperature: float, *, logq_correction: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [Q, K] float32, mask [Q, K]): the blocks side by side, divided by the temperature,
    each corrected negative shifted by `-log(K_draws * p)`, and entries off the mask set to -inf.

    The first block's first column is the positive (label 0 of the cross-entropy).
    """
    corrected = [b for b in blocks if logq_correction and b.log_prob is not None]
    log_total_draws = math.log(max(sum(b.draws for b in corrected), 1))
    logits, masks = [], []
    for block in blocks:
        logit = block.scores.float() / temperature
        if logq_correction and block.log_prob is not None:
            logit = logit - (block.log_prob.to(torch.float64) + log_total_draws).to(torch.float32)
        mask = block.mask.expand(logit.shape)
        logits.append(logit.masked_fill(~mask, float("-inf")))
        masks.append(mask)
    return torch.cat(logits, dim=1), torch.cat(masks, dim=1)
