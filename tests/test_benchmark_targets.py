"""The GPU-lease plan's one command (benchmarks/targets.py) must not break silently between leases: its GPT decode
target, in smoke mode (tiny model, float32, CPU), runs through the benchmark script and reports its check; the
train-step targets' arguments parse (both run in ~20 s each with ``--smoke --only train_step,train_step_fused``)."""

import math

from benchmarks.targets import TARGETS, _gpt_decode, train_step_args


def test_gpt_decode_target_smoke():
    result = _gpt_decode(smoke=True)
    ((name, value, unit, op, goal),) = result["checks"]
    assert name == "decode tokens/s, batch 1" and unit == "tok/s" and op == ">=" and goal == 1500.0
    assert math.isfinite(value) and value > 0
    assert [r["batch"] for r in result["rows"]] == [1, 8]


def test_train_step_targets_parse_their_arguments():
    assert {"train_step", "train_step_fused"} <= set(TARGETS)
    full = train_step_args(smoke=False, attention="cudnn")
    assert (full.attention, full.dtype, full.tiny, full.mel_len) == ("cudnn", "bfloat16", False, 500)
    smoke = train_step_args(smoke=True, attention="xla")
    assert (smoke.attention, smoke.dtype, smoke.tiny) == ("xla", "float32", True)
