"""The generic trainer on a toy task: loss falls, an interrupted and resumed run equals an uninterrupted
one, freezing by regex, NaN stop."""

import json
import os
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest

from indextts2_jax.train.trainer import NonFiniteLossError, train
from tests.toy_task import ToyTask, toy_config

REPO = Path(__file__).resolve().parents[1]


def _losses(workdir):
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


def test_loss_falls_and_metrics_written(tmp_path):
    out = train(toy_config(steps=60), str(tmp_path), ToyTask(toy_config(steps=60)))
    losses = _losses(tmp_path)
    assert out["step"] == 60
    assert losses[60] < 0.5 * losses[5], losses
    assert (tmp_path / "tensorboard").is_dir()
    rows = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert any(r["split"] == "eval" for r in rows)
    assert {"grad_norm", "param_norm", "update_norm", "learning_rate", "tokens_per_second"} <= set(rows[0])


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted 40-step run (in-process; the subprocess runs compute the same numbers)."""
    workdir = tmp_path_factory.mktemp("ref")
    cfg = toy_config(steps=40)
    train(cfg, str(workdir), ToyTask(cfg))
    return _losses(workdir)


def test_resume_in_process_matches_uninterrupted(tmp_path, reference_run):
    cfg = toy_config(steps=40)
    first = train(cfg, str(tmp_path / "run"), ToyTask(cfg), stop_after_steps=17)
    assert first["step"] == 17
    second = train(cfg, str(tmp_path / "run"), ToyTask(cfg))
    assert second["step"] == 40
    a, b = reference_run, _losses(tmp_path / "run")
    for step in (20, 25, 30, 35, 40):
        assert abs(a[step] - b[step]) <= 1e-6, (step, a[step], b[step])


def test_freeze_by_regex_keeps_params(tmp_path):
    import orbax.checkpoint as ocp

    cfg = toy_config(steps=10, freeze=("^hidden/",))
    train(cfg, str(tmp_path), ToyTask(cfg))
    mngr = ocp.CheckpointManager(str(tmp_path / "checkpoints"), item_names=("state", "data"))
    state = mngr.restore(10, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    task = ToyTask(cfg)
    init = task.init_params(jax.random.split(jax.random.key(cfg.seed))[0], task.example_batch())
    init = jax.tree.map(np.asarray, nn.unbox(init))
    np.testing.assert_array_equal(state["params"]["hidden"]["kernel"], init["hidden"]["kernel"])
    assert not np.allclose(state["params"]["out"]["kernel"], init["out"]["kernel"])


def test_nan_loss_stops_clearly(tmp_path):
    cfg = toy_config(steps=10)
    with pytest.raises(NonFiniteLossError, match="loss is nan at step 5"):
        train(cfg, str(tmp_path), ToyTask(cfg, nan_at_step=0))


# The SIGKILL-and-restart and 8-device sharded-equals-single-device tests of the trainer run on the real
# stages (tests/test_train_gpt.py, tests/test_train_codec.py), which exercise this same loop end to end.
