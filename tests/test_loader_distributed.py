"""Two real JAX processes (gloo CPU collectives on localhost), each reading its own part of the batch.

DESIGN.md §5 point 10: each process sees 2 CPU devices, 4 global devices after
jax.distributed.initialize, and builds the global batch with make_array_from_process_local_data.
"""
import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np

from jaxdict.data import ActivationLoader, ArraySource

N, D, BATCH, STEPS = 800, 4, 16, 6

CHILD = textwrap.dedent(f"""
    import json, sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_num_cpu_devices", 2)
    jax.distributed.initialize(coordinator_address="127.0.0.1:" + sys.argv[1], num_processes=2,
                               process_id=int(sys.argv[2]))
    import numpy as np
    from jax.experimental import multihost_utils
    from jaxdict.data import ActivationLoader, ArraySource
    x = np.zeros(({N}, {D}), np.float32); x[:, 0] = np.arange({N})
    mesh = jax.make_mesh((4,), ("data",))
    loader = ActivationLoader(ArraySource(x), global_batch_size={BATCH}, mesh=mesh, seed=7,
                              slab_rows=20, shuffle_buffer_rows=60)
    out = []
    for _, batch in zip(range({STEPS}), loader):
        assert batch.shape == ({BATCH}, {D}), batch.shape
        assert len(batch.addressable_shards) == 2
        # a collective over the global array: the sum of row ids, seen by both processes
        total = jax.jit(lambda b: b[:, 0].sum())(batch)
        full = multihost_utils.process_allgather(batch, tiled=True)
        out.append({{"sum": float(total), "rows": full[:, 0].astype(int).tolist()}})
    print("RESULT " + json.dumps(out), flush=True)
    jax.distributed.shutdown()
""")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_build_one_global_batch():
    port = str(_free_port())
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, port, str(i)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=240)
        assert p.returncode == 0, stderr[-3000:]
        line = [ln for ln in stdout.splitlines() if ln.startswith("RESULT ")][0]
        outs.append(json.loads(line[len("RESULT "):]))
    assert outs[0] == outs[1]
    # the same stream, simulated in this process: process p's local rows are rows
    # [p * 8, (p + 1) * 8) of each global batch
    x = np.zeros((N, D), np.float32)
    x[:, 0] = np.arange(N)
    local = [ActivationLoader(ArraySource(x), global_batch_size=BATCH, seed=7, slab_rows=20,
                              shuffle_buffer_rows=60, process_index=p, process_count=2).iter_local()
             for p in range(2)]
    seen = set()
    for step in outs[0]:
        want = np.concatenate([next(it)[:, 0] for it in local]).astype(int)
        assert step["rows"] == want.tolist()
        assert step["sum"] == float(want.sum())
        assert not seen & set(step["rows"])
        seen |= set(step["rows"])
