"""CAMPPlus (CAM++) parity with the official PyTorch module (random weights, eval mode, float32).

Tolerance: 1e-5 max relative error (max|a-e| / max|e|) on the embedding and on every ``inter_*`` activation.
Measured <= 5e-7: BatchNorm runs from running statistics, so the only differences are float32 rounding in the
convolutions; 1e-5 leaves headroom for other BLAS/XLA builds while still catching any layout or padding slip
(those give O(1) errors).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from indextts2_jax.errors import CheckpointError, ConfigError
from indextts2_jax.models.campplus import CAMPPlus, CAMPPlusConfig, from_torch, segment_mean
from tests.parity.cases import assert_close, cases, get_case

TOL = 1e-5


@functools.lru_cache(maxsize=2)
def _embed(config: CAMPPlusConfig):
    model = CAMPPlus(config)
    return jax.jit(lambda variables, fbank: model.apply(variables, fbank, mutable=["intermediates"]))


@pytest.mark.parametrize("path", cases("campplus"))
def test_campplus_matches_official(path):
    case = get_case(path)
    config = CAMPPlusConfig.from_official(case.config)
    variables = from_torch(case.params, config)
    embedding, state = _embed(config)(variables, jnp.asarray(case.inputs["feat"]))
    assert_close(np.asarray(embedding), case.outputs["embedding"], TOL, f"{case.id} embedding")
    inter = {k: v[0] for k, v in state["intermediates"].items()}
    compared = 0
    for name, expected in case.outputs.items():
        if not name.startswith("inter_"):
            continue
        got = np.asarray(inter[name])
        if got.ndim == 3:  # ours (B, T, C), torch (B, C, T)
            got = got.transpose(0, 2, 1)
        assert_close(got, expected, TOL, f"{case.id} {name}")
        compared += 1
    assert compared == len([k for k in case.outputs if k.startswith("inter_")]) >= 1


def test_segment_mean_partial_last_segment():
    x = jnp.arange(2 * 250 * 3, dtype=jnp.float32).reshape(2, 250, 3)
    got = np.asarray(segment_mean(x))
    xn = np.asarray(x)
    for start, stop in [(0, 100), (100, 200), (200, 250)]:  # last segment: 50 real frames
        np.testing.assert_allclose(got[:, start:stop], np.broadcast_to(xn[:, start:stop].mean(1, keepdims=True),
                                                                       got[:, start:stop].shape), rtol=1e-6)


def test_from_torch_is_strict():
    case = get_case(cases("campplus")[0].values[0])
    config = CAMPPlusConfig.from_official(case.config)
    missing = {k: v for k, v in case.params.items() if k != "xvector.dense.nonlinear.batchnorm.running_var"}
    with pytest.raises(CheckpointError, match="running_var"):
        from_torch(missing, config)
    extra = dict(case.params, **{"xvector.dense.linear.bias": np.zeros((192,), np.float32)})
    with pytest.raises(CheckpointError, match="dense.linear.bias"):
        from_torch(extra, config)
    with pytest.raises(CheckpointError):  # the real model's widths do not fit the tiny checkpoint
        from_torch(case.params, CAMPPlusConfig())
    with pytest.raises(ConfigError):
        CAMPPlusConfig.from_official(dict(case.config, bogus=1))


def test_official_sizes():
    config = CAMPPlusConfig()
    assert config.head_channels == 320
    assert [c for _, c in config.block_channels()] == [256, 512, 512]
