"""`jaxdict bench`: throughput of the train step (every architecture), the loader and the harvester."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", nargs="?", default="step", choices=["step", "steady", "train", "gemm", "loader", "harvest", "clt"],
                        help="what to measure (default: step). steady: the TopK step with dead latents (AuxK "
                             "on) against the same step without AuxK, on one device, a 2x4 mesh and a sweep "
                             "axis of 4, alternating; train: whole runs, jaxdict train beside SAELens's "
                             "SAETrainer.fit on --store (needs --saelens); gemm: the step's GEMM shapes in XLA beside "
                             "numpy's and torch's BLAS, fresh output against a reused buffer, with the CPU "
                             "model and instruction set")
    parser.add_argument("--d-in", type=int, default=640, help="input width (Gemma 3 270M: 640)")
    parser.add_argument("--features", type=int, default=16384, help="dictionary size F")
    parser.add_argument("--batch-size", type=int, default=4096, help="tokens per step B")
    parser.add_argument("--k", type=int, default=64, help="TopK / BatchTopK k")
    parser.add_argument("--archs", default="relu_l1,topk,topk-dense,batchtopk,batchtopk-dense,jumprelu",
                        help="comma-separated: relu_l1, topk (sparse decode), topk-dense, batchtopk (sparse "
                             "decode), batchtopk-dense, jumprelu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="compute dtype of the step's matmuls (parameters stay float32)")
    parser.add_argument("--decode", default="sparse", choices=["sparse", "dense"],
                        help="steady: TopK decoding (sparse gathers the k active decoder rows; dense is one "
                             "matmul, the faster on a GPU)")
    parser.add_argument("--mesh", default="1x1", help="data×model mesh, e.g. 1x1, 2x4")
    parser.add_argument("--iters", type=int, default=5, help="timed steps after warm-up")
    parser.add_argument("--saelens", action="store_true",
                        help="also run SAELens's train step at the same shapes in this run and print ratios "
                             "(needs the optional extra: pip install 'jaxdict[saelens]')")
    parser.add_argument("--store", default=None,
                        help="step on B real activations from this store (rows --store-offset..) instead of "
                             "random normal data")
    parser.add_argument("--store-offset", type=int, default=0, help="first store row of the batch")
    parser.add_argument("--from-run", default=None,
                        help="start the rows of this training run's architecture from its latest checkpoint "
                             "(sets --d-in/--features/--k from the run); which latents fire decides the cost "
                             "of the sparse paths")
    parser.add_argument("--dead-frac", type=float, default=0.05,
                        help="step/steady: share of latents kept dead for the steady-state rows (0 skips them)")
    parser.add_argument("--rounds", type=int, default=7, help="steady, gemm: alternating timed rounds")
    parser.add_argument("--sweep", type=int, default=4, help="steady: runs on the sweep axis of its sweep rows (0 skips them)")
    parser.add_argument("--steps", type=int, default=1000, help="train: optimiser steps of each run")
    parser.add_argument("--lr", type=float, default=5e-4, help="train: Adam learning rate (both runs)")
    parser.add_argument("--dead-steps", type=int, default=100, help="train: dead window in steps (both runs)")
    parser.add_argument("--eval-rows", type=int, default=32768, help="train: held-out rows scored")
    parser.add_argument("--out", default="runs/bench/train_vs_saelens", help="train: folder of the runs")
    parser.add_argument("--clt-layers", type=int, default=18, help="clt: layers L (Gemma 3 270M: 18)")
    parser.add_argument("--clt-features", type=int, default=1024, help="clt: features per layer")
    parser.add_argument("--clt-archs", default="jumprelu,topk,batchtopk",
                        help="clt: comma-separated, of jumprelu, topk (sparse decode), topk-dense, batchtopk")
    parser.add_argument("--json", type=Path, default=None, help="write all numbers to this JSON file")


_ARCHS = {
    "relu_l1": ("relu_l1", {}),
    "topk": ("topk", {"decode": "sparse"}),
    "topk-dense": ("topk", {"decode": "dense"}),
    "batchtopk": ("batchtopk", {"decode": "sparse"}),
    "batchtopk-dense": ("batchtopk", {"decode": "dense"}),
    "jumprelu": ("jumprelu", {}),
}


def _parse_mesh(text: str) -> tuple[int, int]:
    try:
        data, model = (int(p) for p in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--mesh {text!r}: expected DATAxMODEL, e.g. 1x1 or 2x4") from None
    return data, model


def run(args: argparse.Namespace) -> int:
    if args.what == "loader":
        from jaxdict.bench import loader

        return int(loader.main([]) or 0)
    if args.what == "harvest":
        from jaxdict.bench import harvest

        result = harvest.bench_harvest(model="gemma3-270m", hook="resid_post.9", context=128,
                                       batch_size=32, tokens=50_000, corpus="default", matmul_n=2048)
        print(json.dumps(result, indent=2, default=str))
        return 0

    if args.what == "steady":
        from jaxdict.bench.steady_state import run_steady_suite

        result = run_steady_suite(d_in=args.d_in, n_features=args.features, batch_size=args.batch_size, k=args.k,
                                  dead_frac=args.dead_frac, rounds=args.rounds, compute_dtype=args.dtype,
                                  decode=args.decode, sweep=args.sweep, meshes=[_parse_mesh(m) for m in args.mesh.split(",")])
        _write_json(args.json, result)
        return 0
    if args.what == "train":
        return _bench_train(args)
    if args.what == "clt":
        from jaxdict.clt.bench import run_clt_suite

        _write_json(args.json, run_clt_suite(
            n_layers=args.clt_layers, d_model=args.d_in, n_features=args.clt_features, batch_size=args.batch_size,
            k=args.k, archs=args.clt_archs.split(","), mesh_shape=_parse_mesh(args.mesh), iters=args.iters))
        return 0
    if args.what == "gemm":
        from jaxdict.bench.gemm import run_gemm_suite

        _write_json(args.json, run_gemm_suite(batch_size=args.batch_size, d_in=args.d_in,
                                              n_features=args.features, rounds=args.rounds))
        return 0

    return _bench_step(args)


def _bench_step(args: argparse.Namespace) -> int:
    import jax

    from jaxdict.bench.gemm import machine_info
    from jaxdict.bench.step import run_step_suite

    unknown = [a for a in args.archs.split(",") if a not in _ARCHS]
    if unknown:
        raise ValueError(f"--archs: unknown {unknown}; valid: {', '.join(_ARCHS)}")
    archs = [_ARCHS[a] for a in args.archs.split(",")]
    trained = None
    d_in, n_features, k = args.d_in, args.features, args.k
    if args.from_run:
        trained, (d_in, n_features, k) = _trained_from_run(args.from_run)
    batch = _store_batch(args, d_in) if args.store else None
    cpu = machine_info()
    print(f"machine: {cpu['cpu']} ({' '.join(cpu['isa'])}), allocator {cpu['allocator']}, {jax.device_count()} "
          f"{jax.default_backend()} device(s), jax {jax.__version__}, python {sys.version.split()[0]}")
    print(f"shape: d_in={d_in} F={n_features} B={args.batch_size} k={k} dtype={args.dtype} mesh={args.mesh}")
    result = run_step_suite(d_in=d_in, n_features=n_features, batch_size=args.batch_size, k=k,
                            compute_dtype=args.dtype, archs=archs, iters=args.iters,
                            mesh_shape=_parse_mesh(args.mesh), batch=batch, trained=trained,
                            dead_frac=args.dead_frac)
    result["machine"] = cpu
    if args.saelens:
        result["saelens"] = _saelens_steps(result["steps"], d_in, n_features, args.batch_size, k, args.iters,
                                           args.dead_frac)
    _write_json(args.json, result)
    return 0


def _trained_from_run(run_dir: str):
    """(arch, params as trained, input scale) of a run's latest checkpoint, and its (d_in, F, k)."""
    from jaxdict.sae.io import load_run

    from jaxdict.sae.params import fold_input_scale

    sae = load_run(run_dir)
    # load_run folds the input scale into the weights (raw units); the train step wants them as
    # trained, on x · input_scale (its unit-norm decoder and Adam step assume that scale).
    scale = sae.extra["input_scale"]
    trained = (sae.cfg.arch, fold_input_scale(sae.params, 1.0 / scale), scale)
    print(f"from run: {run_dir} step {sae.step} ({sae.cfg.arch}, d_in={sae.cfg.d_in}, "
          f"F={sae.cfg.n_features}, k={sae.cfg.k})")
    return trained, (sae.cfg.d_in, sae.cfg.n_features, sae.cfg.k)


def _store_batch(args: argparse.Namespace, d_in: int):
    """B rows of --store from --store-offset on."""
    from jaxdict.store.reader import open_store

    store = open_store(args.store)
    store.check_compatible(d_in)
    stop = args.store_offset + args.batch_size
    if args.store_offset < 0 or stop > store.n_rows:
        raise ValueError(f"--store-offset {args.store_offset}: the store has {store.n_rows} rows, "
                         f"a batch needs {args.batch_size} from there")
    batch = store.read(args.store_offset, stop)
    print(f"batch: rows {args.store_offset}..{stop} of {args.store}")
    return batch


def _saelens_steps(ours_rows: list[dict], d_in: int, n_features: int, batch_size: int, k: int,
                   iters: int, dead_frac: float) -> list[dict]:
    """SAELens's train step at the same shapes, printed beside our tokens/s: fresh against our fresh
    step, and (TopK) with the same latents dead against our step with them dead."""
    from jaxdict.bench.saelens import measure_saelens_step, saelens_available
    from jaxdict.bench.steady_state import dead_ids

    if not saelens_available():
        raise ValueError("--saelens needs sae-lens and torch: pip install 'jaxdict[saelens]'")
    rows = []
    ours = {(r["arch"], r["decode"], r["dead_frac"]): r for r in ours_rows}
    cases = [("relu_l1", "dense", 0.0), ("topk", "sparse", 0.0)]
    if dead_frac > 0:
        cases.append(("topk", "sparse", dead_frac))
    for arch, decode, frac in cases:
        theirs = measure_saelens_step(arch, d_in, n_features, batch_size, k=k, iters=iters,
                                      dead_ids=dead_ids(n_features, frac))
        rows.append(theirs)
        mine = ours.get((arch, decode, frac))
        ratio = f"  jaxdict/SAELens = {mine['tokens_per_s'] / theirs['tokens_per_s']:.2f}x" if mine else ""
        state = f"{100 * frac:g}% dead" if frac else "fresh"
        print(f"SAELens {arch:8s} {state:8s} {theirs['tokens_per_s']:9.0f} tok/s ({theirs['library']}, torch "
              f"{theirs['torch']}, {theirs['threads']} threads){ratio}")
    return rows


def _write_json(path: Path | None, result) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2, default=str))


def _bench_train(args: argparse.Namespace) -> int:
    if not args.saelens or not args.store:
        raise SystemExit("bench train compares with SAELens: pass --saelens and --store PATH")
    from jaxdict.bench.saelens import saelens_available

    if not saelens_available():
        raise SystemExit("--saelens needs sae-lens and torch: pip install 'jaxdict[saelens]'")
    from jaxdict.bench.train_vs_saelens import WholeRun, run_whole

    spec = WholeRun(store=args.store, n_features=args.features, k=args.k, batch_size=args.batch_size,
                    steps=args.steps, lr=args.lr, dead_steps=args.dead_steps, eval_rows=args.eval_rows,
                    out_dir=args.out)
    result = run_whole(spec)
    j, t = result["jaxdict"], result["saelens"]
    print(f"{'':8s} {'wall s':>8s} {'tok/s':>8s} {'fvu':>7s} {'l0':>6s} {'dead':>6s}")
    for name, r in (("jaxdict", j), ("SAELens", t)):
        print(f"{name:8s} {r['wall_s']:8.0f} {r['tokens_per_s']:8.0f} {r['fvu']:7.4f} {r['l0']:6.1f} "
              f"{100 * r['dead_frac']:5.1f}%")
    print(f"jaxdict / SAELens end to end: {result['speedup']:.2f}x")
    _write_json(args.json, result)
    return 0
