"""Parity of the Perceiver resampler with the official PerceiverResampler (reference §5.2).

Tolerance: max relative error 1e-4 (float32 on both sides; only summation order differs).
"""

import jax
import jax.numpy as jnp
import pytest

from indextts2_jax.nn.perceiver import PerceiverConfig, PerceiverResampler, from_torch
from tests.parity.cases import assert_close, cases, get_case

TOL = 1e-4


@pytest.mark.parametrize("case_path", cases("perceiver_resampler"))
def test_perceiver_resampler(case_path):
    case = get_case(case_path)
    cfg = PerceiverConfig.from_official(case.config)
    params = from_torch(case.params, cfg)
    model = PerceiverResampler(cfg)
    run = jax.jit(lambda p, x, m: model.apply({"params": p}, x, m))
    x = jnp.asarray(case.inputs["x"])
    masked = run(params, x, jnp.asarray(case.inputs["mask"]))
    assert_close(masked, case.outputs["latents_masked"], TOL, "latents_masked")
    unmasked = run(params, x, None)
    assert_close(unmasked, case.outputs["latents_nomask"], TOL, "latents_nomask")
    # the masked and unmasked results must differ (the mask hides random frames), else the test is blind
    assert float(jnp.max(jnp.abs(masked - unmasked))) > 1e-3
