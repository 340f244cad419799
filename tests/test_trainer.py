"""The generic trainer on a toy task: loss falls, resume equals an uninterrupted run (in-process and
after SIGKILL), sharded equals one device, freezing, NaN stop."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
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


_RUN = textwrap.dedent(
    """
    import sys
    from indextts2_jax.train.trainer import train
    from tests.toy_task import ToyTask, toy_config
    steps, workdir, slow, mesh = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4]
    cfg = toy_config(steps=steps)
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = (int(x) for x in mesh.split(","))
    train(cfg, workdir, ToyTask(cfg, seconds_per_batch=slow))
    print("DONE")
    """
)


def _spawn(steps, workdir, slow=0.0, mesh="-1,1,1", devices=1):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    return subprocess.Popen([sys.executable, "-c", _RUN, str(steps), str(workdir), str(slow), mesh], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigkill_and_restart_continues_exactly(tmp_path, reference_run):
    # A slowed-down run is killed (SIGKILL: no handler runs) once its step-20 checkpoint exists.
    victim = _spawn(40, tmp_path / "run", slow=0.05)
    deadline = time.time() + 240
    ckpt = tmp_path / "run" / "checkpoints"
    while time.time() < deadline:
        if ckpt.is_dir() and any(p.name.isdigit() and int(p.name) >= 20 for p in ckpt.iterdir()):
            break
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    out, _ = victim.communicate(timeout=60)
    assert victim.returncode == -signal.SIGKILL, out
    assert max(_losses(tmp_path / "run")) < 40, "the victim finished before it was killed"
    again = _spawn(40, tmp_path / "run")
    out, _ = again.communicate(timeout=240)
    assert again.returncode == 0, out
    a, b = reference_run, _losses(tmp_path / "run")
    for step in (30, 35, 40):
        assert abs(a[step] - b[step]) <= 1e-6, (step, a[step], b[step])


def test_sharded_equals_single_device(tmp_path):
    one = _spawn(20, tmp_path / "one", devices=1)
    eight = _spawn(20, tmp_path / "eight", mesh="2,2,2", devices=8)
    o1, _ = one.communicate(timeout=240)
    o8, _ = eight.communicate(timeout=240)
    assert one.returncode == 0, o1
    assert eight.returncode == 0, o8
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "eight")
    for step in (5, 10, 15, 20):
        assert abs(a[step] - b[step]) <= 1e-5 * max(1.0, abs(a[step])), (step, a[step], b[step])
