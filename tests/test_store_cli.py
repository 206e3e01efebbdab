"""`jaxdict store info | verify | import` through the console dispatcher."""
import json
import os

import ml_dtypes
import numpy as np

from jaxdict.cli import main
from jaxdict.store import open_store


def test_import_npy_then_info_and_verify(tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
    np.save(tmp_path / "acts.npy", x)
    out = str(tmp_path / "store")
    assert main(["store", "import", str(tmp_path / "acts.npy"), "--out", out, "--dtype",
                 "bfloat16", "--model", "m", "--hook", "h", "--shard-rows", "128"]) == 0
    store = open_store(out)
    np.testing.assert_array_equal(store.read(0, 300), x.astype(ml_dtypes.bfloat16))
    assert store.metadata["model"] == "m" and store.metadata["hook"] == "h"
    np.testing.assert_array_equal(store.read_meta(0, 300)["doc_ids"], np.arange(300))
    capsys.readouterr()
    assert main(["store", "info", out]) == 0
    text = capsys.readouterr().out
    assert "300 x d_in 8 (bfloat16)" in text and "3 published" in text
    assert main(["store", "info", out, "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["stats"]["count"] == 300 and len(manifest["shards"]) == 3
    assert main(["store", "verify", out, "--no-progress"]) == 0
    assert "ok: 3 shards, 300 rows verified" in capsys.readouterr().out
    # import into an existing store is refused
    assert main(["store", "import", str(tmp_path / "acts.npy"), "--out", out]) == 1
    assert "already holds a store (300 rows)" in capsys.readouterr().err


def test_verify_reports_the_corrupt_shard_and_fails(tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
    doc = np.arange(200) // 10
    np.savez(tmp_path / "a.npz", resid=x, doc_ids=doc, token_ids=np.arange(200) + 5,
             positions=np.arange(200) % 10)
    out = str(tmp_path / "store")
    assert main(["store", "import", str(tmp_path / "a.npz"), "--out", out, "--shard-rows",
                 "64"]) == 0
    meta = open_store(out).read_meta(0, 200)
    np.testing.assert_array_equal(meta["doc_ids"], doc)
    np.testing.assert_array_equal(meta["token_ids"], np.arange(200) + 5)
    f = os.path.join(out, "acts", "c", "1", "0")
    data = bytearray(open(f, "rb").read())
    data[40] ^= 0x10
    open(f, "wb").write(bytes(data))
    capsys.readouterr()
    assert main(["store", "verify", out, "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "CORRUPT shard slot 1 " in captured.out
    assert "1 of 4 shards are corrupt" in captured.err


def test_import_errors_name_the_problem(tmp_path, capsys):
    np.savez(tmp_path / "two.npz", a=np.zeros((4, 2), np.float32), b=np.zeros((4, 2), np.float32))
    assert main(["store", "import", str(tmp_path / "two.npz"), "--out", str(tmp_path / "s")]) == 1
    assert "holds arrays ['a', 'b']; name the activations with --key" in capsys.readouterr().err
    assert main(["store", "import", str(tmp_path / "two.npz"), "--key", "c", "--out",
                 str(tmp_path / "s")]) == 1
    assert "--key 'c' is not in" in capsys.readouterr().err
    assert main(["store", "info", str(tmp_path / "nowhere")]) == 1
    assert "no activation store at" in capsys.readouterr().err
