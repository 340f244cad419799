"""Every config file loads; the arg parser is typed and strict; the official yaml loader matches."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from configs import common, indextts2
from indextts2_jax.errors import ConfigError
from indextts2_jax.official_config import load_official_config

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
CONFIG_FILES = sorted(p.stem for p in (REPO / "configs").glob("*.py") if p.stem not in ("__init__", "common"))


@pytest.mark.parametrize("name", CONFIG_FILES)
@pytest.mark.parametrize("stage", indextts2.STAGES)
def test_every_config_loads(name, stage):
    module = importlib.import_module(f"configs.{name}")
    assert module.get_config(None).stage == "gpt"
    c = module.get_config(f"stage={stage}")
    assert c.stage == stage
    for key in ("model", "aux", "inference", "optimizer", "mesh", "checkpoint"):
        assert key in c, f"configs/{name}.py lacks {key}"
    g = c.model.gpt
    assert g.model_dim % g.heads == 0
    assert g.stop_mel_token == g.number_mel_codes - 1 and g.start_mel_token == g.number_mel_codes - 2
    assert c.model.semantic_codec.codebook_size == g.number_mel_codes - 2


def test_parse_arg_types_and_errors():
    c = common.parse_arg("a=3,b=0.5,c=true,d=x,e=1;2", a=1, b=1.0, c=False, d="y", e=(0,))
    assert (c.a, c.b, c.c, c.d, c.e) == (3, 0.5, True, "x", (1, 2))
    with pytest.raises(ConfigError, match="unknown config arg 'typo'"):
        common.parse_arg("typo=1", a=1)
    with pytest.raises(ConfigError, match="expected an integer"):
        common.parse_arg("a=1.5", a=1)
    with pytest.raises(ConfigError, match="expected a boolean"):
        common.parse_arg("c=maybe", c=False)
    with pytest.raises(ConfigError, match="not of the form key=value"):
        common.parse_arg("a", a=1)
    with pytest.raises(AttributeError):
        common.parse_arg(None, a=1).new_key = 2  # locked


def test_bad_stage_rejected():
    with pytest.raises(ConfigError, match="stage"):
        indextts2.get_config("stage=tokenizer")


def test_official_yaml_equals_python_config():
    loaded = load_official_config(DATA / "official_config.yaml")
    assert loaded.model.to_dict() == indextts2.get_config().model.to_dict()
    assert loaded.aux.to_dict() == indextts2.official_aux_config().to_dict()


def test_official_yaml_rejects_typos_and_other_versions(tmp_path):
    text = (DATA / "official_config.yaml").read_text()
    bad = tmp_path / "typo" / "config.yaml"
    bad.parent.mkdir()
    bad.write_text(text.replace("    heads: 20", "    head: 20"))
    with pytest.raises(ConfigError, match=r"unknown keys \['gpt.head'\].*missing keys \['gpt.heads'\]"):
        load_official_config(bad)
    v25 = tmp_path / "v25" / "config.yaml"
    v25.parent.mkdir()
    v25.write_text(text.replace("version: 2.0", "version: 2.5"))
    with pytest.raises(ConfigError, match="version 2.5"):
        load_official_config(v25)
    with pytest.raises(ConfigError, match="not found"):
        load_official_config(tmp_path / "nope.yaml")


def test_official_yaml_reads_aux_configs(tmp_path):
    import json

    (tmp_path / "config.yaml").write_text((DATA / "official_config.yaml").read_text())
    (tmp_path / "hf_cache" / "bigvgan").mkdir(parents=True)
    (tmp_path / "hf_cache" / "bigvgan" / "config.json").write_text(json.dumps({"upsample_initial_channel": 512}))
    assert load_official_config(tmp_path / "config.yaml").aux.bigvgan.upsample_initial_channel == 512


def _train(*args):
    return subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_train_launcher_resolves_and_locks_config(tmp_path):
    ok = _train("--config", "configs/demo.py:stage=gpt", "--workdir", str(tmp_path / "wd"), "--dry_run",
                "--config.gpt_stage=2")
    assert ok.returncode == 0, ok.stderr
    import json

    assert json.loads((tmp_path / "wd" / "config.json").read_text())["gpt_stage"] == 2
    noshards = _train("--config", "configs/demo.py:stage=gpt", "--workdir", str(tmp_path / "wd2"))
    assert noshards.returncode != 0 and "config.data.shards is not set" in noshards.stderr
    assert "data_pipeline.preprocess" in noshards.stderr
    typo = _train("--config", "configs/demo.py:stage=gpt", "--workdir", str(tmp_path / "wd"), "--config.typo=1")
    assert typo.returncode != 0 and "typo" in typo.stderr
    badarg = _train("--config", "configs/demo.py:stag=gpt", "--workdir", str(tmp_path / "wd"))
    assert badarg.returncode != 0 and "unknown config arg 'stag'" in badarg.stderr
