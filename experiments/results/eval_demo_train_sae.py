"""Train the SAE of experiments/results/eval_demo_gemma3_270m.md: TopK (F=4096, k=32) on the harvested
Gemma 3 270M resid_post.9 store, written as a run folder (config.json + Orbax checkpoints with
params/state/config) in the training driver's layout.

Usage: python experiments/results/eval_demo_train_sae.py runs/eval-demo-topk 4096 32 1600
"""
import dataclasses, json, sys, time
from pathlib import Path
import numpy as np, jax, jax.numpy as jnp
import orbax.checkpoint as ocp
from jaxdict.data import StoreSource
from jaxdict.sae.config import SAEConfig
from jaxdict.train.mesh import make_mesh
from jaxdict.train.optim import OptimConfig
from jaxdict.train.state import create_state
from jaxdict.train.step import TrainStep

store_path = "runs/stores/gemma3-270m-stdlib/resid_post.9"
out = Path(sys.argv[1]).resolve(); F = int(sys.argv[2]); k = int(sys.argv[3]); steps = int(sys.argv[4])
src = StoreSource(store_path, split="train")
n = src.n_rows
print("train rows", n, flush=True)
x = np.concatenate([src.read(a, min(a + 65536, n)) for a in range(0, n, 65536)]).astype(np.float32)
cfg = SAEConfig(arch="topk", d_in=640, n_features=F, k=k)
optim = OptimConfig(lr=4e-4, total_steps=steps)
mesh = make_mesh(data=1, model=1, devices=jax.devices()[:1])
scale = float(np.sqrt(640 / np.mean(np.sum(x[:100000].astype(np.float64) ** 2, axis=-1))))
state, shardings = create_state(cfg, optim, mesh, seed=0, input_scale=scale)
B = 1024
step = TrainStep(cfg, optim, mesh, shardings, B)
rng = np.random.default_rng(0)
t0 = time.time()
for i in range(steps):
    rows = rng.integers(0, n, B)
    state, m = step(state, jax.device_put(x[rows], step.batch_sharding))
    if i % 100 == 0 or i == steps - 1:
        m = jax.device_get(m)
        print(i, f"fvu {float(m['fvu']):.3f} l0 {float(m['l0']):.1f} dead {float(m['dead_frac']):.3f} {time.time()-t0:.0f}s", flush=True)
out.mkdir(parents=True, exist_ok=True)
doc = {"sae": dataclasses.asdict(cfg), "data": {"store": store_path, "model": "gemma3-270m", "hook": "resid_post.9", "d_in": 640},
       "optim": dataclasses.asdict(optim), "note": "trained by /tmp/evalwork/train_demo.py with jaxdict.train.step.TrainStep"}
(out / "config.json").write_text(json.dumps(doc, indent=1))
p = jax.device_get(state.params)
np.savez(out / "params_backup.npz", W_enc=p.W_enc, b_enc=p.b_enc, W_dec=p.W_dec, b_dec=p.b_dec, input_scale=np.float32(scale))
item = {"W_enc": p.W_enc, "b_enc": p.b_enc, "W_dec": p.W_dec, "b_dec": p.b_dec, "input_scale": np.float32(scale)}
mngr = ocp.CheckpointManager(out / "checkpoints", item_names=("params", "state", "config"))
mngr.save(steps, args=ocp.args.Composite(params=ocp.args.StandardSave(item), state=ocp.args.StandardSave({"step": np.int32(steps)}), config=ocp.args.JsonSave(doc)))
mngr.wait_until_finished(); mngr.close()
print("saved", out, flush=True)
