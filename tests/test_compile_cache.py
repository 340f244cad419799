"""The persistent compilation cache of the launchers (indextts2_jax/compile_cache.py, ``--compilation_cache``)."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import soundfile as sf

from indextts2_jax import compile_cache
from tests.subproc import REPO, cpu_env


def test_a_new_function_of_a_cached_program_is_read_from_disk(tmp_path):
    """Two jitted functions of one program (same code, same name: the name is part of the key): the first is
    compiled and written, the second read back, as in a restarted process, where every function is new."""
    before = compile_cache.stats()
    try:
        folder = compile_cache.enable(tmp_path / "xla")
        assert compile_cache.stats()["dir"] == folder

        def make():
            def program(x):
                return jnp.tanh(x @ x.T) * 3.0 + 0.123456  # a program no other test compiles
            return program

        x = jnp.arange(12.0).reshape(3, 4)
        first = jax.jit(make())(x)
        after_first = compile_cache.stats()
        assert after_first["requests"] - before["requests"] >= 1 and after_first["hits"] == before["hits"]
        assert any((tmp_path / "xla").iterdir())
        second = jax.jit(make())(x)  # another function object: traced and lowered anew
        after_second = compile_cache.stats()
        assert after_second["hits"] - after_first["hits"] == 1
        np.testing.assert_array_equal(np.asarray(first), np.asarray(second))
    finally:
        compile_cache.disable()
    assert compile_cache.stats()["dir"] is None


def test_synthesize_cli_second_run_reads_every_program_from_the_cache(tmp_path):
    """``experiments.synthesize --compilation_cache``: a second process compiles nothing (every compile request
    is a cache hit) and writes the same audio."""
    sf.write(tmp_path / "spk.wav", (0.2 * np.sin(np.arange(33075) * 0.06)).astype(np.float32), 22050)
    reports = []
    for run in range(2):
        argv = ["--model", "random:tiny", "--text", "hello world.", "--speaker_prompt", str(tmp_path / "spk.wav"),
                "--out", str(tmp_path / f"out{run}.wav"), "--no-do_sample", "--num_beams", "1",
                "--max_mel_tokens", "16", "--diffusion_steps", "2", "--json", "--no_progress",
                "--compilation_cache", str(tmp_path / "xla")]
        proc = subprocess.run([sys.executable, "-m", "experiments.synthesize", *argv], cwd=REPO, env=cpu_env(),
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        reports.append(json.loads(proc.stdout)["compilation_cache"])
    first, second = reports
    assert first["requests"] > 0 and first["hits"] == 0
    assert second["requests"] == first["requests"] and second["hits"] == second["requests"]
    a, _ = sf.read(tmp_path / "out0.wav")
    b, _ = sf.read(tmp_path / "out1.wav")
    np.testing.assert_array_equal(a, b)
