"""Config machinery: dict round trips, typed overrides, close-match errors, file loading."""
import json
import textwrap

import pytest

from jaxdict.config import apply_overrides, config_diff, config_from_dict, split_spec
from jaxdict.sae.config import ConfigError, SAEConfig
from jaxdict.train.config import RunConfig, group_key, load_run_configs


def test_round_trip_through_json():
    cfg = RunConfig(sae=SAEConfig(arch="topk", d_in=16, n_features=64, k=4))
    again = RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_overrides_coerce_to_field_types():
    cfg = apply_overrides(RunConfig(), ["optim.lr=3e-4", "sae.k=32", "sae.arch=topk", "mesh.data=none",
                                        "run.async_checkpoint=false", "sae.aux_k=7", "mesh.model=2"])
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.sae.k == 32 and isinstance(cfg.sae.k, int)
    assert cfg.sae.arch == "topk" and cfg.mesh.data is None and cfg.mesh.model == 2
    assert cfg.run.async_checkpoint is False and cfg.sae.aux_k == 7


@pytest.mark.parametrize("item, words", [
    ("optim.lrr=1", ["optim.lrr", "'lr'"]),
    ("sae.n_feature=5", ["'n_features'"]),
    ("optm.lr=1", ["'optim'"]),
])
def test_unknown_key_names_close_matches(item, words):
    with pytest.raises(ConfigError) as err:
        apply_overrides(RunConfig(), [item])
    for w in words:
        assert w in str(err.value)


@pytest.mark.parametrize("item, words", [
    ("sae.k=abc", ["sae.k", "'abc'", "integer"]),
    ("sae.k=1.5", ["not an integer"]),
    ("run.async_checkpoint=maybe", ["boolean"]),
    ("sae.compute_dtype=float16", ["float32", "bfloat16"]),
    ("optim.lr", ["KEY=VALUE"]),
    ("optim.lr=-1", ["must be > 0"]),
    ("sae.arch.x=1", ["is a value, not a section"]),
])
def test_bad_values_are_named(item, words):
    with pytest.raises(ConfigError) as err:
        apply_overrides(RunConfig(), [item])
    for w in words:
        assert w in str(err.value)


def test_from_dict_unknown_nested_key():
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        config_from_dict(RunConfig, {"data": {"source": "planted", "batchsize": 4}})


def test_diff_lists_changed_keys():
    a = RunConfig().to_dict()
    b = apply_overrides(RunConfig(), ["optim.lr=1e-3"]).to_dict()
    assert config_diff(a, b) == [f"optim.lr: {a['optim']['lr']!r} -> 0.001"]


def test_split_spec():
    assert split_spec("experiments/x.py:tiny") == ("experiments/x.py", "tiny")
    assert split_spec("run/config.json") == ("run/config.json", None)
    assert split_spec("C:/x.py") == ("C:/x.py", None)


def test_python_file_configs_sweeps_and_points(tmp_path):
    (tmp_path / "shared.py").write_text("from jaxdict.train.config import RunConfig\nBASE = RunConfig()\n")
    (tmp_path / "exp.py").write_text(textwrap.dedent("""
        import dataclasses
        from shared import BASE
        def named(n, lr):
            return dataclasses.replace(BASE, run=dataclasses.replace(BASE.run, name=n),
                                       optim=dataclasses.replace(BASE.optim, lr=lr))
        CONFIGS = {"one": BASE, "lazy": lambda: named("lazy", 1e-3)}
        SWEEPS = {"lrs": lambda: [named("p1", 1e-3), named("p2", 2e-3)]}
    """))
    f = tmp_path / "exp.py"
    assert load_run_configs(f"{f}:one") == [RunConfig()]
    assert load_run_configs(f"{f}:lazy")[0].optim.lr == 1e-3
    pts = load_run_configs(f"{f}:lrs")
    assert [p.run.name for p in pts] == ["p1", "p2"]
    assert group_key(pts[0]) == group_key(pts[1])  # only lr differs
    assert load_run_configs(f"{f}:p2")[0].optim.lr == 2e-3
    with pytest.raises(ConfigError, match="did you mean lrs"):
        load_run_configs(f"{f}:lr")
    with pytest.raises(ConfigError, match="name one"):
        load_run_configs(str(f))
    (tmp_path / "c.json").write_text(json.dumps(pts[1].to_dict()))
    assert load_run_configs(str(tmp_path / "c.json")) == [pts[1]]


def test_group_key_separates_shapes():
    a = RunConfig()
    b = apply_overrides(a, ["sae.l1_coeff=1", "optim.lr=1e-3", "run.seed=3", "run.name=b"])
    c = apply_overrides(a, ["sae.n_features=256"])
    assert group_key(a) == group_key(b) != group_key(c)


def test_shipped_experiments_load():
    for name in ("scaling_monosemanticity", "topk_grid", "l1_sweep", "lr_sweep"):
        for variant in ("tiny", "gemma"):
            pts = load_run_configs(f"experiments/{name}.py:{variant}")
            names = [p.run.name for p in pts]
            assert len(names) == len(set(names)) >= 3, (name, variant)
