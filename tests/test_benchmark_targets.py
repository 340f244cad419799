"""The GPU-lease plan's one command (benchmarks/targets.py) must not break silently between leases: its GPT decode
target, in smoke mode (tiny model, float32, CPU), runs through the benchmark script and reports its check; the
train-step target's arguments parse (it runs in ~20 s with ``--smoke --only train_step``); the fused-attention
fallback measures einsum attention when the fused call raises; the benchmarks' random params fill their shapes."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.common import loop_step_ops, random_like
from benchmarks.targets import TARGETS, _fused_first, _gpt_decode, train_step_args


def test_gpt_decode_target_smoke():
    result = _gpt_decode(smoke=True)
    ((name, value, unit, op, goal),) = result["checks"]
    assert name == "decode tokens/s, batch 1" and unit == "tok/s" and op == ">=" and goal == 1500.0
    assert math.isfinite(value) and value > 0
    assert [r["batch"] for r in result["rows"]] == [1, 8]
    assert all(r["ops/step"] > 0 for r in result["rows"])  # the decode loop's body was found and counted


def test_loop_step_ops_counts_a_loop_body():
    def f(x, w):
        return jax.lax.fori_loop(0, 5, lambda i, x: jnp.tanh(x @ w) + 1.0, x)

    def g(x, w):  # the same work twice per step
        return jax.lax.fori_loop(0, 5, lambda i, x: jnp.tanh(jnp.tanh(x @ w) @ w.T) + 1.0, x)

    args = (jnp.ones((4, 8)), jnp.ones((8, 8)))
    (one,) = loop_step_ops(jax.jit(f).lower(*args).compile().as_text())
    (two,) = loop_step_ops(jax.jit(g).lower(*args).compile().as_text())
    assert 0 < sum(one.values()) < sum(two.values()), (one, two)
    assert not {"parameter", "tuple", "get-tuple-element", "constant"} & set(one)
    assert loop_step_ops(jax.jit(lambda x: x + 1).lower(args[0]).compile().as_text()) == []  # no loop


def test_train_step_targets_parse_their_arguments():
    assert "train_step" in TARGETS
    full = train_step_args(smoke=False, attention="cudnn")
    assert (full.attention, full.dtype, full.tiny, full.mel_len) == ("cudnn", "bfloat16", False, 500)
    smoke = train_step_args(smoke=True, attention="xla")
    assert (smoke.attention, smoke.dtype, smoke.tiny) == ("xla", "float32", True)


def test_fused_attention_falls_back_to_einsum(monkeypatch):
    from benchmarks import targets

    tried = []

    def run(attention):
        tried.append(attention)
        if attention == "cudnn":
            raise RuntimeError("cuDNN is not detected.")
        return {"checks": [], "rows": [{"x": 1}]}

    monkeypatch.setattr(targets, "_cudnn_probe", lambda: "")  # the probe passes, the run raises: einsum after it
    (row,) = _fused_first(False, run)["rows"]
    assert tried == ["cudnn", "einsum"] and row["attention"] == "einsum"
    assert "cuDNN is not detected" in row["fused_failure"]
    tried.clear()
    monkeypatch.setattr(targets, "_cudnn_probe", lambda: "cudnn attention probe failed: no")  # einsum only
    (row,) = _fused_first(False, run)["rows"]
    assert tried == ["einsum"]
    assert row == {"x": 1, "attention": "einsum", "fused_failure": "cudnn attention probe failed: no"}
    assert _fused_first(True, lambda a: {"checks": [], "rows": [{"x": 1}]})["rows"] == [{"x": 1, "attention": "xla"}]


def test_cudnn_probe_says_why_on_a_cpu():
    from benchmarks.targets import _cudnn_probe

    if jax.default_backend() != "cpu":
        pytest.skip("a CPU-only check: no cuDNN there")
    assert _cudnn_probe().startswith("cudnn attention probe failed")


def test_random_like_fills_an_abstract_tree_leaf_by_leaf():
    abstract = {"dense": {"kernel": jax.ShapeDtypeStruct((64, 32), jnp.float32),
                          "bias": jax.ShapeDtypeStruct((32,), jnp.float32)},
                "table": jax.ShapeDtypeStruct((64, 32), jnp.bfloat16)}
    params = random_like(abstract, seed=3)
    assert jax.tree.structure(params) == jax.tree.structure(abstract)
    for p, a in zip(jax.tree.leaves(params), jax.tree.leaves(abstract)):
        assert p.shape == a.shape and p.dtype == a.dtype
    kernel, bias = np.asarray(params["dense"]["kernel"]), np.asarray(params["dense"]["bias"])
    assert abs(kernel.std() - 0.02) < 0.003 and abs(kernel.mean()) < 0.003
    assert abs(bias.mean() - 1.0) < 0.02  # 1-D leaves are gains around 1
    # leaves of one shape differ (a key per leaf); the same seed gives the same values, another seed others
    assert not np.array_equal(kernel, np.asarray(params["table"], np.float32))
    np.testing.assert_array_equal(kernel, np.asarray(random_like(abstract, seed=3)["dense"]["kernel"]))
    assert not np.array_equal(kernel, np.asarray(random_like(abstract, seed=4)["dense"]["kernel"]))


def test_emotion_text_benchmark_smoke():
    from benchmarks import emotion_text

    (row,) = emotion_text.main(["--size", "tiny", "--repeats", "1", "--new_tokens", "8", "--prompt_tokens", "40"])
    assert row["new tokens"] == 8 and row["prompt"] == 40 and row["tokens/s"] > 0 and row["time (s)"] > 0
