"""The GPU-lease plan's one command (benchmarks/targets.py) must not break silently between leases: its GPT decode
target, in smoke mode (tiny model, float32, CPU), runs through the benchmark script and reports its check."""

import math

from benchmarks.targets import _gpt_decode


def test_gpt_decode_target_smoke():
    result = _gpt_decode(smoke=True)
    ((name, value, unit, op, goal),) = result["checks"]
    assert name == "decode tokens/s, batch 1" and unit == "tok/s" and op == ">=" and goal == 1500.0
    assert math.isfinite(value) and value > 0
    assert [r["batch"] for r in result["rows"]] == [1, 8]
