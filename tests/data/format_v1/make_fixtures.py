"""How the format-v1 fixtures beside this file were made: run ONCE, at commit 8b5cbc2 (the last
commit before the checkpoint layout got a format version), never again — they stand for run
folders, checkpoints and exports written by that code, which later code must keep loading bitwise
(tests/test_format_v1.py). Kept as a record; later APIs may have moved.

    cd <repo at 8b5cbc2> && PYTHONPATH=$PWD python tests/data/format_v1/make_fixtures.py OUT

Writes into OUT (then copied here, without the machine-specific absolute paths mattering: the
tests pass the store explicitly):
  store/          `jaxdict store import` of 512 planted rows, d_in 16 (float32)
  run_jumprelu/   8 steps of d_in 16, F 64 on a 2×4 mesh of 8 fake CPU devices, checkpoints at
                  steps 4 and 8 (items params/state/data_iter/config; the state item holds `rng`)
  run_topk/       the same for TopK (no threshold), only the checkpoint at step 8 kept
  export_<arch>/  `jaxdict export RUN` (SAELens layout + a "jaxdict" section)
  saelens_<arch>/ the same without the "jaxdict" section (as SAELens writes it)
  expected/       what the loaders returned at 8b5cbc2: <run>_state_<step>.npz (every leaf of the
                  restored TrainState, keyed by its path), <run>_sae_<step>.npz (load_sae: params
                  in raw units), <run>_data_iter_<step>.json; the exports load to <run>_sae_8.npz
"""
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8 --xla_cpu_enable_concurrency_optimized_scheduler=false"
os.environ["JAX_PLATFORMS"] = "cpu"

import json  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxdict.cli import main  # noqa: E402
from jaxdict.sae.config import SAEConfig  # noqa: E402
from jaxdict.sae.io import load_sae  # noqa: E402
from jaxdict.testing import planted_dictionary  # noqa: E402
from jaxdict.train import checkpoint as ckpt  # noqa: E402
from jaxdict.train.config import DataConfig, MeshConfig, RunConfig, RunSettings  # noqa: E402
from jaxdict.train.driver import train  # noqa: E402
from jaxdict.train.mesh import make_mesh  # noqa: E402
from jaxdict.train.optim import OptimConfig  # noqa: E402
from jaxdict.train.state import init_state, state_specs  # noqa: E402

D, F, B, STEPS = 16, 64, 64, 8
KEEP = {"jumprelu": 2, "topk": 1}
STATE_STEP = {"jumprelu": 4, "topk": 8}


def config(arch: str, store: Path) -> RunConfig:
    return RunConfig(
        sae=SAEConfig(arch=arch, d_in=D, n_features=F, k=4, l0_coeff=1e-3),
        optim=OptimConfig(lr=3e-3, total_steps=STEPS),
        data=DataConfig(store=str(store), batch_size=B, eval_fraction=0.1, eval_rows=128, slab_rows=128,
                        shuffle_buffer_rows=256),
        mesh=MeshConfig(data=2, model=4),
        run=RunSettings(name=f"v1-{arch}", log_every=4, checkpoint_every=4, keep=KEEP[arch], progress=False,
                        async_checkpoint=False),
    )


def flat_state(state) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    return {jax.tree_util.keystr(path): np.asarray(jax.device_get(v)) for path, v in leaves}


def main_(out: Path) -> None:
    out.mkdir(parents=True)
    expected = out / "expected"
    expected.mkdir()
    x, _ = planted_dictionary(d_in=D, n_planted=32, seed=0).sample(512, seed=1)
    np.save(out / "rows.npy", np.asarray(x, np.float32))
    assert main(["store", "import", str(out / "rows.npy"), "--out", str(out / "store"),
                 "--model", "planted", "--hook", "planted.0", "--shard-rows", "1024"]) == 0
    (out / "rows.npy").unlink()
    for arch in ("jumprelu", "topk"):
        cfg = config(arch, out / "store")
        run = out / f"run_{arch}"
        result = train(cfg, str(run))
        assert result.finished and ckpt.all_steps(run) == [4, 8][-KEEP[arch]:], ckpt.all_steps(run)
        for step in ckpt.all_steps(run):
            sae = load_sae(run, step=step)
            np.savez(expected / f"run_{arch}_sae_{step}.npz",
                     **{k: np.asarray(v) for k, v in vars(sae.params).items() if v is not None})
        step = STATE_STEP[arch]
        mesh = make_mesh(2, 4)
        abstract = jax.eval_shape(lambda k: init_state(cfg.sae, cfg.optim, k), jax.random.PRNGKey(0))
        state, data_iter, conf = ckpt.restore_onto_mesh(run, mesh, abstract,
                                                        state_specs(cfg.sae, cfg.optim, abstract), step=step)
        params = ckpt.load_params(run, step)  # the params item alone, as numpy: the same bits
        for k, v in params.items():
            leaf = state.input_scale if k == "input_scale" else getattr(state.params, k)
            assert np.array_equal(np.asarray(leaf), v), k
        np.savez(expected / f"run_{arch}_state_{step}.npz", **flat_state(state))
        (expected / f"run_{arch}_data_iter_{step}.json").write_text(json.dumps(data_iter, indent=1, sort_keys=True))
        assert main(["export", str(run), "--out", str(out / f"export_{arch}")]) == 0
        plain = out / f"saelens_{arch}"
        shutil.copytree(out / f"export_{arch}", plain)
        doc = json.loads((plain / "cfg.json").read_text())
        del doc["jaxdict"]
        (plain / "cfg.json").write_text(json.dumps(doc, indent=1))
        with np.load(expected / f"run_{arch}_sae_8.npz") as z:
            want = dict(z)
        for kind in ("export", "saelens"):
            got = load_sae(out / f"{kind}_{arch}").params
            for k, v in want.items():
                assert np.array_equal(np.asarray(getattr(got, k)), v), (kind, arch, k)
        shutil.rmtree(run / "tb", ignore_errors=True)  # TensorBoard event files: not a format we read


if __name__ == "__main__":
    main_(Path(sys.argv[1]))
