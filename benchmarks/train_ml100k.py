"""Train HSTUMatch on MovieLens-100K on CPU and rank the full corpus (leave-last-out).

    python benchmarks/train_ml100k.py --data /work/shared/data/ml-100k/u.data

Sequences come from `prepare_sequences` (max_seq_len 200: train row = history -> second
to last item, eval row = history -> last item). Every batch draws its negatives with
`NegativeSampler` (uniform item weights), `--neg-per-pos` per positive in the interleaved
layout, one sampler call per user so a user's own positives are never drawn as negatives,
keyed by (epoch, user row) so a run is reproducible. The objective is `autoregressive` by
default (every history position scores its next item) or `last`.

Prints one JSON line per evaluation and a final JSON summary, with the most-popular
baseline on the same split. The data file is read in place, never copied.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import torch

from negseq.batch import JaggedBatch, JaggedFeature
from negseq.io.prepare import prepare_sequences
from negseq.model.hstu_match import HSTUMatch, STUConfig
from negseq.model.inputs import list_column
from negseq.model.metrics import evaluate, item_counts
from negseq.sampler import ItemTable, NegativeSampler
from negseq.train.loop import make_optimizer, train


def read_ml100k(path: str) -> pa.Table:
    names = ["user_id", "item_id", "rating", "timestamp"]
    return pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=names),
        parse_options=pacsv.ParseOptions(delimiter="\t"),
        convert_options=pacsv.ConvertOptions(column_types={n: pa.int64() for n in names}),
    )


def interleaved_batches(
    table: pa.Table,
    items: ItemTable,
    sampler: NegativeSampler,
    *,
    objective: str,
    neg_per_pos: int,
    batch_size: int,
    epoch: int,
    seed: int,
) -> Iterator[JaggedBatch]:
    """Shuffled interleaved JaggedBatches: per user, positives (next_items or target) + negatives."""
    uih, uih_off = list_column(table, "uih")
    if objective == "autoregressive":
        pos, pos_off = list_column(table, "next_items")
    else:
        pos = table.column("target").to_numpy()
        pos_off = np.arange(len(pos) + 1)
    order = np.random.default_rng([seed, epoch]).permutation(table.num_rows)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        uih_rows = [uih[uih_off[r] : uih_off[r + 1]] for r in rows]
        cand_rows, pos_lengths = [], []
        for r in rows:
            positives = pos[pos_off[r] : pos_off[r + 1]]
            negs = sampler.get(
                {"item_id": pa.array(positives, pa.int64())},
                epoch=epoch,
                batch_index=int(r),
                per_positive=neg_per_pos,
            ).ids.reshape(len(positives), neg_per_pos)
            cand_rows.append(np.concatenate([positives[:, None], negs], axis=1).reshape(-1))
            pos_lengths.append(len(positives))
        yield JaggedBatch(
            uih=_feature(uih_rows, items),
            candidate=_feature(cand_rows, items),
            cand_pos_lengths=torch.tensor(pos_lengths, dtype=torch.int32),
            layout="interleaved",
            neg_per_pos=neg_per_pos,
        )


def _feature(rows: list[np.ndarray], items: ItemTable) -> JaggedFeature:
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    flat = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    return JaggedFeature(
        torch.from_numpy(items.dense_rows(flat.astype(np.int64)).astype(np.int64)),
        torch.from_numpy(np.r_[0, np.cumsum(lengths)].astype(np.int64)),
    )


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="/work/shared/data/ml-100k/u.data")
    p.add_argument("--objective", choices=["autoregressive", "last"], default="autoregressive")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--time-budget", type=float, default=540.0, help="stop training after this many s")
    p.add_argument("--max-users", type=int, default=0, help="keep only the first N users (tests)")
    p.add_argument("--neg-per-pos", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--temperature", type=float, default=0.05)
    p.add_argument("--max-seq-len", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=0, help="also evaluate every N epochs (0: end only)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    log = read_ml100k(args.data)
    if args.max_users:
        log = log.filter(pa.compute.less_equal(log.column("user_id"), args.max_users))
    splits = prepare_sequences(
        log, user_field="user_id", item_field="item_id", time_field="timestamp", max_seq_len=args.max_seq_len
    )
    # no early stopping here: train on every item before the eval target (the valid rows' targets)
    train_table, eval_table = splits.valid, splits.eval
    item_ids = np.unique(log.column("item_id").to_numpy())
    items = ItemTable.from_arrow(pa.table({"id": item_ids, "weight": np.ones(len(item_ids))}))
    sampler = NegativeSampler(items, num_sample=args.neg_per_pos, item_id_field="item_id", seed=args.seed)
    # most-popular baseline: counts over every interaction but the held-out last ones
    counts = item_counts(train_table, items, ("uih",))
    counts += np.bincount(items.dense_rows(train_table.column("target").to_numpy()), minlength=len(items) + 1)

    model = HSTUMatch(
        len(items),
        args.dim,
        stu=STUConfig(num_heads=args.heads, output_dropout_ratio=args.dropout),
        num_layers=args.layers,
        max_seq_len=args.max_seq_len,
        temperature=args.temperature,
        layout="interleaved",
        objective=args.objective,
        input_dropout_ratio=args.dropout,
    )
    optimizer = make_optimizer(model, lr=args.lr)
    train_seconds, epochs_done, history = 0.0, 0, []
    for epoch in range(args.epochs):
        batches = interleaved_batches(
            train_table,
            items,
            sampler,
            objective=args.objective,
            neg_per_pos=args.neg_per_pos,
            batch_size=args.batch_size,
            epoch=epoch,
            seed=args.seed,
        )
        report = train(model, batches, optimizer=optimizer)
        train_seconds += report.seconds
        epochs_done += 1
        line = {
            "epoch": epoch,
            "loss": round(report.mean_loss, 4),
            "seconds": round(report.seconds, 1),
            "data_wait_s": round(report.data_wait_seconds, 1),
        }
        if args.eval_every and (epoch + 1) % args.eval_every == 0:
            line["HR@10"] = evaluate(model, eval_table, items, ks=(10,), counts=counts)["model"]["HR@10"]
        history.append(line)
        if not args.quiet:
            print(json.dumps(line), file=sys.stderr, flush=True)
        if train_seconds > args.time_budget:
            break
    result = evaluate(model, eval_table, items, ks=(10, 50, 200), counts=counts)
    summary = {
        "bench": "train_ml100k",
        "objective": args.objective,
        "sequences_from": "negseq.io.prepare.prepare_sequences",
        "users": eval_table.num_rows,
        "items": len(items),
        "epochs": epochs_done,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "first_epoch_loss": history[0]["loss"] if history else None,
        "last_epoch_loss": history[-1]["loss"] if history else None,
        "model": {k: round(v, 4) for k, v in result["model"].items()},
        "most_popular": {k: round(v, 4) for k, v in result["most_popular"].items()},
        "HR@10_ratio": round(result["model"]["HR@10"] / max(result["most_popular"]["HR@10"], 1e-12), 2),
        "config": {k: v for k, v in vars(args).items() if k not in ("data", "quiet")},
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
