"""A synthetic interaction log with Zipf popularity and sequential structure a model can learn.

Items fall into clusters (think genres) of `cluster_size` consecutive ids. A user draws a
home cluster by Zipf popularity and walks it: the next item is usually the one after the
current one (a learnable transition), sometimes a popular item of the same cluster, and
now and then a jump to another cluster. Most-popular ranking scores some hits; a
sequence model that learns the transitions scores many more.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def generate_interactions(
    *,
    num_users: int = 2000,
    num_items: int = 1000,
    cluster_size: int = 20,
    min_len: int = 10,
    max_len: int = 60,
    p_next: float = 0.7,
    p_jump: float = 0.05,
    zipf_a: float = 1.1,
    seed: int = 0,
) -> pa.Table:
    """Columns user_id, item_id, timestamp (int64); item ids are 1..num_items."""
    rng = np.random.default_rng(seed)
    num_clusters = max(1, num_items // cluster_size)
    cluster_pop = 1.0 / np.arange(1, num_clusters + 1) ** zipf_a
    cluster_pop /= cluster_pop.sum()
    in_cluster_pop = 1.0 / np.arange(1, cluster_size + 1) ** zipf_a
    in_cluster_pop /= in_cluster_pop.sum()
    lengths = rng.integers(min_len, max_len + 1, num_users)
    users, items, times = [], [], []
    for user, length in enumerate(lengths):
        cluster = rng.choice(num_clusters, p=cluster_pop)
        pos = rng.choice(cluster_size, p=in_cluster_pop)
        seq = np.empty(length, np.int64)
        for t in range(length):
            seq[t] = cluster * cluster_size + pos + 1
            roll = rng.random()
            if roll < p_jump:
                cluster = rng.choice(num_clusters, p=cluster_pop)
                pos = rng.choice(cluster_size, p=in_cluster_pop)
            elif roll < p_jump + p_next:
                pos = (pos + 1) % cluster_size
            else:
                pos = rng.choice(cluster_size, p=in_cluster_pop)
        users.append(np.full(length, user + 1, np.int64))
        items.append(seq)
        times.append(1_600_000_000 + np.cumsum(rng.integers(60, 3600, length)))
    return pa.table(
        {
            "user_id": np.concatenate(users),
            "item_id": np.concatenate(items),
            "timestamp": np.concatenate(times).astype(np.int64),
        }
    )
