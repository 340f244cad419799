"""Two processes x 4 CPU devices (``jax.distributed.initialize`` on loopback, gloo collectives) train a
few GPT-stage steps through the real launcher and checkpoint together; a one-process, one-device run
then restores that checkpoint (state and data position) and continues."""

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from tests.subproc import cpu_env

REPO = Path(__file__).resolve().parents[1]

TINY_CONFIG = '''
import os
from indextts2_jax.train.recipe import tiny_config


def get_config(arg=None):
    c = tiny_config("gpt", os.environ["TINY_SHARDS"], steps=int(arg or 6), **{"data.length_buckets": (64,)})
    c.codec_checkpoint = os.environ["TINY_CODEC"]
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = (int(x) for x in os.environ["TINY_MESH"].split(","))
    return c
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from indextts2_jax.models.semantic_codec import init_params
    from indextts2_jax.train.recipe import tiny_config, write_synthetic_shards
    from indextts2_jax.train.tasks.codec import codec_config_from, save_params

    root = tmp_path_factory.mktemp("multihost")
    shards = write_synthetic_shards(root / "shards", num_utterances=40)
    codec = save_params(init_params(codec_config_from(tiny_config("gpt", shards)), jax.random.key(0)),
                        root / "codec.msgpack")
    (root / "tiny.py").write_text(TINY_CONFIG)
    return {"root": root, "shards": shards, "codec": codec, "config": root / "tiny.py"}


def _launch(setup, workdir, steps, mesh, devices, *extra):
    env = cpu_env(devices, TINY_SHARDS=str(setup["shards"]), TINY_CODEC=str(setup["codec"]), TINY_MESH=mesh)
    env.pop("JAX_COORDINATOR_ADDRESS", None)
    cmd = [sys.executable, "-m", "experiments.train", "--config", f"{setup['config']}:{steps}", "--workdir",
           str(workdir), *extra]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_processes_train_and_one_process_resumes(setup):
    workdir = setup["root"] / "run"
    address = f"127.0.0.1:{_free_port()}"
    procs = [_launch(setup, workdir, 4, "2,2,2", 4, "--coordinator_address", address, "--num_processes", "2",
                     "--process_id", str(i)) for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-4000:]
    assert "2 processes, 8 devices" in outs[0]
    data = workdir / "checkpoints" / "4" / "data"
    assert sorted(x.name for x in data.glob("process_*.json")) == ["process_0-of-2.json", "process_1-of-2.json"]
    rows = [json.loads(x) for x in open(workdir / "metrics.jsonl")]
    first = {r["step"]: r["loss"] for r in rows if r["split"] == "train"}
    assert sorted(first) == [1, 2, 3, 4]  # written by process 0 only

    # one process, one device: restores the two-process checkpoint (resharded) and continues to step 7 (and
    # keeps its compiled programs in a persistent compilation cache)
    cache = setup["root"] / "xla_cache"
    one = _launch(setup, workdir, 7, "-1,1,1", 1, "--compilation_cache", str(cache))
    out = one.communicate(timeout=600)[0]
    assert one.returncode == 0, out[-4000:]
    assert "resumed from" in out and "at step 4" in out
    requests = re.search(r"persistent compilation cache: \{.*'requests': (\d+)", out)
    assert requests and int(requests.group(1)) > 0 and any(cache.iterdir()), out[-2000:]
    rows = [json.loads(x) for x in open(workdir / "metrics.jsonl")]
    after = {r["step"]: r["loss"] for r in rows if r["split"] == "train" and r["step"] > 4}
    assert sorted(after) == [5, 6, 7] and all(np.isfinite(v) for v in after.values())
