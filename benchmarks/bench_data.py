"""Synthetic tables for the sampler benchmark, written once as Parquet and graph-learn TSV.

The same seeded tables feed negseq (Parquet) and graph-learn (its typed TSV format, as
TorchEasyRec writes it), so both sides of the benchmark sample from identical data.
A manifest records the parameters; a rerun with the same parameters reuses the files.

    python benchmarks/bench_data.py            # full size: 1M items, 100k users
    python benchmarks/bench_data.py --small    # 50k items, 5k users
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

DATA_ROOT = Path(__file__).resolve().parent / "_data"
FORMAT_VERSION = 1  # bump when the generated content changes, so old files are regenerated

# Columns of the item feature string, in order, as graph-learn's Decoder sees them.
ITEM_ATTR_FIELDS = ("item_id", "title", "category")
ITEM_ATTR_GL_TYPES = ("int", "string", "int")
ATTR_DELIMITER = ":"


@dataclass(frozen=True)
class BenchDataSpec:
    """Everything that determines the generated tables."""

    num_items: int = 1_000_000
    num_users: int = 100_000
    pos_per_user: int = 50
    hard_per_user: int = 10
    zipf_exponent: float = 1.0
    num_categories: int = 500
    seed: int = 20240611

    @classmethod
    def small(cls) -> BenchDataSpec:
        return cls(num_items=50_000, num_users=5_000)

    @property
    def name(self) -> str:
        return f"items{self.num_items}_users{self.num_users}_seed{self.seed}"


@dataclass(frozen=True)
class BenchData:
    """Paths of one generated data set (Parquet for negseq, TSV for graph-learn)."""

    root: Path
    spec: BenchDataSpec

    def parquet(self, table: str) -> Path:
        return self.root / f"{table}.parquet"

    def tsv(self, table: str) -> Path:
        return self.root / f"{table}.tsv"

    @property
    def queries(self) -> Path:
        """Positive (user, item) pairs for the benchmark calls, one .npy a column."""
        return self.root / "queries.npz"

    @property
    def manifest(self) -> dict:
        return json.loads((self.root / "manifest.json").read_text())


def item_ids(num_items: int) -> np.ndarray:
    """Unique, scattered int64 ids (an odd multiplier is a bijection modulo 2**40)."""
    return (np.arange(num_items, dtype=np.int64) * 2_654_435_761 + 12_345) % (1 << 40)


def zipf_weights(num_items: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Zipf popularity 1/rank**s, ranks shuffled so popularity is unrelated to id order."""
    ranks = rng.permutation(num_items).astype(np.float64) + 1.0
    return ranks**-exponent


def make_items(spec: BenchDataSpec, rng: np.random.Generator) -> pa.Table:
    ids = item_ids(spec.num_items)
    weights = zipf_weights(spec.num_items, spec.zipf_exponent, rng)
    title_numbers = pa.array(rng.integers(0, 10**9, spec.num_items), pa.int64())
    titles = pc.binary_join_element_wise("title", pc.cast(title_numbers, pa.string()), "-")
    categories = pa.array(rng.integers(0, spec.num_categories, spec.num_items), pa.int64())
    return pa.table(
        {
            "id": pa.array(ids),
            "weight": pa.array(weights),
            "item_id": pa.array(ids),
            "title": titles,
            "category": categories,
        }
    )


def make_users(spec: BenchDataSpec) -> pa.Table:
    ids = np.arange(1, spec.num_users + 1, dtype=np.int64)
    return pa.table({"id": ids, "weight": np.ones(spec.num_users)})


def draw_user_items(
    num_users: int,
    mean_degree: int,
    item_probs: np.ndarray,
    rng: np.random.Generator,
    exclude_keys: np.ndarray | None = None,
) -> np.ndarray:
    """Sorted distinct keys user_row * num_items + item_row, items drawn by popularity.

    Each user gets a degree in [0.8, 1.2] * mean_degree; twice that many draws are made
    and, after duplicates (and excluded keys) are dropped, a random subset of that size kept.
    """
    num_items = len(item_probs)
    degrees = rng.integers(max(1, mean_degree * 4 // 5), mean_degree * 6 // 5 + 1, num_users)
    users = np.repeat(np.arange(num_users, dtype=np.int64), 2 * degrees)
    keys = np.unique(users * num_items + rng.choice(num_items, size=len(users), p=item_probs))
    if exclude_keys is not None:
        keys = keys[~np.isin(keys, exclude_keys, assume_unique=True)]
    keys = keys[rng.permutation(len(keys))]
    keys = keys[np.argsort(keys // num_items, kind="stable")]
    user_rows = keys // num_items
    starts = np.searchsorted(user_rows, np.arange(num_users))
    rank_in_user = np.arange(len(keys)) - starts[user_rows]
    return np.sort(keys[rank_in_user < degrees[user_rows]])


def edges_from_keys(
    keys: np.ndarray,
    user_ids: np.ndarray,
    ids: np.ndarray,
    num_items: int,
    rng: np.random.Generator,
) -> pa.Table:
    return pa.table(
        {
            "userid": user_ids[keys // num_items],
            "itemid": ids[keys % num_items],
            "weight": rng.random(len(keys)) + 1e-3,
        }
    )


def write_gl_items(items: pa.Table, path: Path) -> None:
    """graph-learn node file: id, weight, and every attr field joined by ':' (item id included)."""
    parts = [pc.cast(items.column(name), pa.string()) for name in ITEM_ATTR_FIELDS]
    feature = pc.binary_join_element_wise(*parts, ATTR_DELIMITER)
    typed = pa.table(
        {
            "id:int64": items.column("id"),
            "weight:float": items.column("weight"),
            "feature:string": feature,
        }
    )
    _write_tsv(typed, path)


def write_gl_weighted(table: pa.Table, path: Path, columns: dict[str, str]) -> None:
    """graph-learn node/edge file without attributes; columns maps name -> typed header."""
    _write_tsv(pa.table({typed: table.column(name) for name, typed in columns.items()}), path)


def _write_tsv(table: pa.Table, path: Path) -> None:
    """Tab-separated, unquoted, header line = the typed column names as graph-learn reads them."""
    options = pacsv.WriteOptions(delimiter="\t", quoting_style="none", include_header=False)
    with open(path, "wb") as sink:
        sink.write(("\t".join(table.column_names) + "\n").encode())
        pacsv.write_csv(table, sink, write_options=options)


def generate(spec: BenchDataSpec, root: Path, *, log=print) -> BenchData:
    """Write every table of `spec` under root (Parquet + TSV + query pairs + manifest)."""
    started = time.perf_counter()
    rng = np.random.default_rng(spec.seed)
    root.mkdir(parents=True, exist_ok=True)
    items = make_items(spec, rng)
    users = make_users(spec)
    probs = items.column("weight").to_numpy()
    probs = probs / probs.sum()
    ids = items.column("id").to_numpy()
    user_ids = users.column("id").to_numpy()

    pos_keys = draw_user_items(spec.num_users, spec.pos_per_user, probs, rng)
    hard_keys = draw_user_items(spec.num_users, spec.hard_per_user, probs, rng, exclude_keys=pos_keys)
    pos_edges = edges_from_keys(pos_keys, user_ids, ids, spec.num_items, rng)
    hard_edges = edges_from_keys(hard_keys, user_ids, ids, spec.num_items, rng)

    # Benchmark calls draw positives by item weight: uniformly random positive edges,
    # whose items were drawn by weight, keep each (user, item) pair a real positive.
    pick = rng.permutation(len(pos_keys))
    np.savez(
        root / "queries.npz",
        userid=pos_edges.column("userid").to_numpy()[pick],
        itemid=pos_edges.column("itemid").to_numpy()[pick],
    )

    data = BenchData(root, spec)
    for name, table in (
        ("items", items),
        ("users", users),
        ("pos_edges", pos_edges),
        ("hard_edges", hard_edges),
    ):
        pq.write_table(table, data.parquet(name))
    write_gl_items(items, data.tsv("items"))
    write_gl_weighted(users, data.tsv("users"), {"id": "id:int64", "weight": "weight:float"})
    edge_columns = {"userid": "userid:int64", "itemid": "itemid:int64", "weight": "weight:float"}
    write_gl_weighted(pos_edges, data.tsv("pos_edges"), edge_columns)
    write_gl_weighted(hard_edges, data.tsv("hard_edges"), edge_columns)

    manifest = {
        "format_version": FORMAT_VERSION,
        "spec": asdict(spec),
        "rows": {
            "items": items.num_rows,
            "users": users.num_rows,
            "pos_edges": pos_edges.num_rows,
            "hard_edges": hard_edges.num_rows,
        },
        "attr_fields": list(ITEM_ATTR_FIELDS),
        "attr_gl_types": list(ITEM_ATTR_GL_TYPES),
        "attr_delimiter": ATTR_DELIMITER,
        "generate_s": round(time.perf_counter() - started, 2),
    }
    # Written last: its presence means the data set is complete.
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"generated {spec.name} in {manifest['generate_s']} s: {manifest['rows']}")
    return data


def ensure(spec: BenchDataSpec, root: Path = DATA_ROOT, *, log=print) -> BenchData:
    """Reuse the data set for spec when a complete one with the same parameters exists."""
    data = BenchData(root / spec.name, spec)
    manifest_path = data.root / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format_version") == FORMAT_VERSION and manifest.get("spec") == asdict(spec):
            return data
        manifest_path.unlink()
    return generate(spec, data.root, log=log)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="50k items, 5k users")
    parser.add_argument("--force", action="store_true", help="regenerate even if present")
    parser.add_argument("--root", type=Path, default=DATA_ROOT)
    args = parser.parse_args()
    spec = BenchDataSpec.small() if args.small else BenchDataSpec()
    if args.force:
        data = generate(spec, args.root / spec.name)
    else:
        data = ensure(spec, args.root)
    print(json.dumps({"data": str(data.root), **data.manifest}))


if __name__ == "__main__":
    main()
