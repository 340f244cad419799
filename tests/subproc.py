"""Subprocess helpers for the tests' JAX runs: the environment, and training-stage runs and their metrics."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_env(devices: int | None = None, cache_dir=None, **extra: str) -> dict[str, str]:
    """``os.environ`` plus: JAX on CPU, ``devices`` simulated host devices (None: the default), the suite's XLA
    flags (conftest's LLVM -O0 unless XLA_FLAGS was set by the user) and, with ``cache_dir``, JAX's persistent
    compilation cache there (every program cached, so a restarted run skips its compiles)."""
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", "")).split()
    if devices is not None:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags), **extra)
    if cache_dir is not None:
        env.update(JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                   JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    return env


# One training run of a stage on tiny_config: argv = stage workdir shards codec steps mesh slow stop overrides.
# ``slow`` seconds of sleep per batch (so a test can SIGKILL it between checkpoints), ``stop`` = stop_after_steps
# (0: run to the end), ``codec`` a codec params file or "" (none), ``overrides`` JSON of dotted config keys.
_STAGE_RUN = textwrap.dedent(
    """
    import json, sys, time
    from indextts2_jax.train.recipe import tiny_config
    from indextts2_jax.train.tasks import task_class
    from indextts2_jax.train.trainer import train
    stage, workdir, shards, codec, steps, mesh, slow, stop, overrides = sys.argv[1:10]
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(overrides).items()}
    c = tiny_config(stage, shards, int(steps), **kw)
    if codec:
        c.codec_checkpoint = codec
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = (int(x) for x in mesh.split(","))
    base = task_class(stage)

    class SlowTask(base):
        def train_iterator(self, process_index, process_count):
            p = self.pipeline("train", process_index, process_count)
            return iter(p.dataset.map(lambda b: (time.sleep(float(slow)), b)[1]))

    task = SlowTask(c) if float(slow) else base(c)
    out = train(c, workdir, task, stop_after_steps=int(stop) or None)
    print("DONE", out["step"])
    """
)


def spawn_stage(stage: str, workdir, shards, steps: int, *, codec=None, mesh: str = "-1,1,1", devices: int = 1,
                slow: float = 0.0, stop: int = 0, overrides: dict | None = None, cache_dir=None) -> subprocess.Popen:
    """Start one ``stage`` training run in a subprocess (stdout and stderr together in ``proc.stdout``)."""
    args = [stage, str(workdir), str(shards), str(codec or ""), str(steps), mesh, str(slow), str(stop),
            json.dumps(overrides or {})]
    return subprocess.Popen([sys.executable, "-c", _STAGE_RUN, *args], cwd=REPO, env=cpu_env(devices, cache_dir),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def metric_rows(workdir) -> list[dict]:
    """Every row of a run's ``metrics.jsonl``."""
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def rows_by_step(workdir, split: str = "train") -> dict[int, dict]:
    """``{step: row}`` of one split (later rows of a step, e.g. after a resume, replace earlier ones)."""
    return {r["step"]: r for r in metric_rows(workdir) if r["split"] == split}


def losses(workdir, key: str = "loss", split: str = "train") -> dict[int, float]:
    """``{step: row[key]}`` of one split."""
    return {s: r[key] for s, r in rows_by_step(workdir, split).items()}
