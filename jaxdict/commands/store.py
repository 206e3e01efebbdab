"""`jaxdict store info | verify | import`: inspect, check and fill activation stores."""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

INFO_HELP = "print the manifest summary, size on disk and running statistics of a store"
VERIFY_HELP = "read every chunk of every shard; report corruption by shard (exit 1 if any)"
IMPORT_HELP = "import activations from a .npy or .npz array into a new store"
META_KEYS = ("token_ids", "doc_ids", "positions")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="store_command", metavar="STORE_COMMAND", required=True)
    info = sub.add_parser("info", help=INFO_HELP, description=INFO_HELP)
    info.add_argument("path", help="store folder (local path or gs://bucket/dir)")
    info.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    info.add_argument("--shards", action="store_true", help="also list every published shard")

    verify = sub.add_parser("verify", help=VERIFY_HELP, description=VERIFY_HELP)
    verify.add_argument("path", help="store folder (local path or gs://bucket/dir)")
    verify.add_argument("--no-progress", action="store_true", help="no progress bar")

    imp = sub.add_parser("import", help=IMPORT_HELP, description=IMPORT_HELP + (
        ". A .npz may also hold token_ids, doc_ids and positions arrays of the same length; "
        "without them token_ids and positions are stored as -1 and every row is its own "
        "document (so the eval split holds out single rows)."))
    imp.add_argument("array", help="a .npy file [N, d_in], or a .npz holding one")
    imp.add_argument("--out", required=True, help="folder of the new store")
    imp.add_argument("--key", help="name of the activation array inside a .npz")
    imp.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                     help="storage dtype (default float32)")
    imp.add_argument("--model", default="unknown", help="model name recorded in the manifest")
    imp.add_argument("--hook", default="unknown", help="hook point recorded in the manifest")
    imp.add_argument("--shard-rows", type=int, default=None,
                     help="rows per shard (default: about 64 MiB per shard)")


def run(args: argparse.Namespace) -> int:
    """Bad input (StoreError, ValueError, FileNotFoundError) raises: jaxdict.cli, exit 1."""
    if args.store_command == "info":
        return _info(args)
    if args.store_command == "verify":
        return _verify(args)
    return _import(args)


def _disk_bytes(path: str) -> int | None:
    if "://" in path and not path.startswith("file://"):
        return None
    total = 0
    for root, _, files in os.walk(path.removeprefix("file://")):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def _gib(n: float) -> str:
    return f"{n / 2**30:.3f} GiB"


def _info(args) -> int:
    from jaxdict.store import open_store

    store = open_store(args.path)
    manifest = store.manifest
    stats = store.stats
    if args.json:
        manifest["stats"] = {"count": stats["count"], "mean": stats["mean"].tolist(),
                             "mean_sq_norm": stats["mean_sq_norm"]}
        print(json.dumps(manifest, indent=1))
        return 0
    disk = _disk_bytes(args.path)
    lines = [
        f"store       {args.path}",
        f"metadata    {json.dumps(store.metadata, sort_keys=True)}",
        f"rows        {store.n_rows:,} x d_in {store.d_in} ({store.dtype})",
        f"shards      {len(store.shards)} published, {store.shard_rows:,} rows each "
        f"({store.header['chunk_rows']} rows per checksummed chunk)",
        f"writers     {store.header['num_writers']}: "
        + ", ".join(f"#{w['writer_index']} {w['rows_published']:,} rows" for w in manifest["writers"]),
        f"size        {_gib(store.nbytes)} of data"
        + (f", {_gib(disk)} on disk" if disk is not None else ""),
        f"statistics  count {stats['count']:,}, E||x||^2 {stats['mean_sq_norm']:.6g}, "
        f"||mean|| {float(np.linalg.norm(stats['mean'])):.6g}",
    ]
    print("\n".join(lines))
    if args.shards:
        print("slot  writer  rows  first_row  crc32")
        for s in store.shards:
            print(f"{s.slot:>4}  {s.writer:>6}  {s.rows:>5}  {s.start:>9}  {s.crc32:#010x}")
    return 0


def _verify(args) -> int:
    from tqdm import tqdm

    from jaxdict.store import open_store, verify_store

    store = open_store(args.path)
    with tqdm(total=store.n_rows, unit="row", unit_scale=True, disable=args.no_progress,
              desc="verify") as bar:
        problems = verify_store(store, progress=bar.update)
    for p in problems:
        print(f"CORRUPT shard slot {p.slot} (writer {p.writer}): {p.message}")
    if problems:
        print(f"{len(problems)} of {len(store.shards)} shards are corrupt", file=sys.stderr)
        return 1
    print(f"ok: {len(store.shards)} shards, {store.n_rows:,} rows verified")
    return 0


def _load_arrays(path: str, key: str | None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    if path.endswith(".npy"):
        if key is not None:
            raise ValueError(f"--key {key!r} is only for .npz files, got {path}")
        return np.load(path, mmap_mode="r"), {}
    if not path.endswith(".npz"):
        raise ValueError(f"array file must end in .npy or .npz, got {path}")
    npz = np.load(path)
    names = [n for n in npz.files if n not in META_KEYS]
    if key is None:
        if len(names) != 1:
            raise ValueError(f"{path} holds arrays {npz.files}; name the activations with --key")
        key = names[0]
    if key not in npz.files:
        raise ValueError(f"--key {key!r} is not in {path}; it holds {npz.files}")
    meta = {n: npz[n] for n in META_KEYS if n in npz.files}
    return npz[key], meta


def _import(args) -> int:
    from tqdm import tqdm

    from jaxdict.store import StoreWriter, open_store
    from jaxdict.store.errors import StoreNotFoundError

    acts, meta = _load_arrays(args.array, args.key)
    if acts.ndim != 2 or not np.issubdtype(acts.dtype, np.floating):
        raise ValueError(f"activations must be a float array [N, d_in], got {acts.dtype} "
                         f"{acts.shape}")
    n = acts.shape[0]
    for name, a in meta.items():
        if a.shape != (n,):
            raise ValueError(f"{name} in {args.array} has shape {a.shape}, expected ({n},)")
    try:
        existing = open_store(args.out).n_rows
    except StoreNotFoundError:
        existing = 0
    else:
        raise ValueError(f"--out {args.out} already holds a store ({existing:,} rows); "
                         f"import into a new folder")
    writer = StoreWriter.open(args.out, d_in=int(acts.shape[1]), dtype=args.dtype,
                              metadata={"model": args.model, "hook": args.hook,
                                        "imported_from": os.path.abspath(args.array)},
                              shard_rows=args.shard_rows)
    step = writer.shard_rows
    with tqdm(total=n, unit="row", unit_scale=True, desc="import") as bar:
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            rows = np.arange(lo, hi, dtype=np.int64)
            writer.append(
                np.asarray(acts[lo:hi]),
                meta["token_ids"][lo:hi] if "token_ids" in meta else np.full(hi - lo, -1, np.int32),
                meta["doc_ids"][lo:hi] if "doc_ids" in meta else rows,
                meta["positions"][lo:hi] if "positions" in meta else np.full(hi - lo, -1, np.int32),
            )
            bar.update(hi - lo)
    writer.close()
    store = open_store(args.out)
    print(f"imported {store.n_rows:,} rows x {store.d_in} ({store.dtype}) into {args.out}, "
          f"{len(store.shards)} shards")
    return 0
