"""S2M parity against the official PyTorch fixtures (``s2mel/*``) plus batching/conversion checks.

Every ``s2mel/<case>`` runs through :func:`test_s2mel_parity`, which dispatches on the case name (an
unknown case fails, so a new fixture cannot pass silently).

Tolerances (max relative error = max|a-e| / max|e|, float32 on CPU):
- length regulator, DiT estimator (+ every stored ``inter_*``), gpt_layer: 1e-5. Measured <= 1.2e-6;
  the ports do the same float32 operations up to summation order.
- CFM sampler (per-step estimator outputs, per-step x, final x) and the whole pipeline: 5e-5.
  Measured ~1e-6: the Euler steps add dt*v each step, so the per-op rounding differences of the
  estimator accumulate over the steps (4 here); 5e-5 leaves room for that while still catching any
  real error (a wrong sign, index or constant changes results at the 1e-2 level or more).
- Step times t: exact (same float32 linspace and accumulation); integer lengths: exact.
"""

from __future__ import annotations

import numpy as np
import pytest

from indextts2_jax.errors import CheckpointError, ConfigError
from indextts2_jax.models import s2mel
from tests.parity.cases import assert_close, cases, fixtures_root, get_case

TOL = 1e-5
TOL_CFM = 5e-5


def _check_length_regulator(case):
    cfg = s2mel.S2MelConfig.from_official(case.config)
    params = s2mel.length_regulator_from_torch(case.params, cfg)
    ylens = case.inputs["ylens"]
    out = s2mel.length_regulate(params, cfg, case.inputs["x"], ylens)
    assert_close(out, case.outputs["out"], TOL, "length_regulator out")
    np.testing.assert_array_equal(ylens, case.outputs["olens"])


def _check_dit_estimator(case):
    cfg = s2mel.S2MelConfig.from_official(case.config)
    params = s2mel.estimator_from_torch(case.params, cfg)
    i = case.inputs
    out, inter = s2mel.estimate_official_layout(params, cfg, i["x"], i["prompt_x"], i["x_lens"], i["t"], i["style"],
                                                i["cond"], return_intermediates=True)
    assert_close(out, case.outputs["out"], TOL, "dit out")
    stored = sorted(k for k in case.outputs if k.startswith("inter_"))
    assert stored and set(stored) <= set(inter), f"missing intermediates {set(stored) - set(inter)}"
    for k in stored:
        assert_close(inter[k], case.outputs[k], TOL, k)


def _t(a):
    """(B, n_mels, T) <-> (B, T, n_mels) (also for stacked (S, B, ., .))."""
    return np.swapaxes(np.asarray(a), -1, -2)


def _check_cfm_inference(case):
    cfg = s2mel.S2MelConfig.from_official(case.config)
    params = s2mel.estimator_from_torch(case.params, cfg)
    i, o = case.inputs, case.outputs
    x, traj = s2mel.cfm_inference(
        params, cfg, i["mu"], i["x_lens"], _t(i["prompt"]), i["style"], int(i["n_timesteps"]),
        float(i["inference_cfg_rate"]), noise=_t(i["noise"]), temperature=float(i["temperature"]),
        return_trajectory=True,
    )
    np.testing.assert_array_equal(np.asarray(traj["step_t"]), o["step_t"])
    for name in ("step_x", "step_dphi_cond", "step_dphi_uncond"):
        assert_close(_t(traj[name]), o[name], TOL_CFM, name)
    assert_close(_t(x), o["out"], TOL_CFM, "cfm out")
    assert np.all(np.asarray(x)[:, : i["prompt"].shape[-1]] == 0), "prompt frames must be zero"


def _run_pipeline(case, params, cfg, **kw):
    i = case.inputs
    return s2mel.synthesize_mel(
        params, cfg, i["S_ref"], _t(i["ref_mel"]), i["style"], i["gpt_latent"], i["S_code_emb"], i["code_lens"],
        n_steps=int(i["n_timesteps"]), cfg_rate=float(i["inference_cfg_rate"]), noise=_t(i["noise"]),
        return_intermediates=True, **kw,
    )


def _check_pipeline(case):
    cfg = s2mel.S2MelConfig.from_official(case.config)
    params = s2mel.from_torch(case.params, cfg)
    got, o = _run_pipeline(case, params, cfg), case.outputs
    np.testing.assert_array_equal(got["target_lengths"], o["target_lengths"])
    for name in ("prompt_condition", "gpt_layer_out", "S_infer", "cond", "cat_condition"):
        assert_close(got[name], o[name], TOL, name)
    for name in ("vc_target_full", "vc_target"):
        assert_close(_t(got[name]), o[name], TOL_CFM, name)


CHECKS = {
    "length_regulator": _check_length_regulator,
    "dit_estimator": _check_dit_estimator,
    "cfm_inference": _check_cfm_inference,
    "pipeline": _check_pipeline,
}


@pytest.mark.parametrize("case_path", cases("s2mel"))
def test_s2mel_parity(case_path):
    case = get_case(case_path)
    assert case.name in CHECKS, f"no check written for fixture case s2mel/{case.name}"
    CHECKS[case.name](case)


# ------------------------------------------------------------------------------------------------
# Beyond the fixtures: per-item batching, strict conversion, config validation
# ------------------------------------------------------------------------------------------------


def _case(name):
    return get_case(str(fixtures_root() / "s2mel" / f"{name}.npz"))


def test_length_regulator_per_item_batch_equals_single():
    """A padded B=2 batch with per-item lengths gives each item's B=1 result."""
    case = _case("length_regulator")
    cfg = s2mel.S2MelConfig.from_official(case.config)
    params = s2mel.length_regulator_from_torch(case.params, cfg)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 23, cfg.length_regulator.in_channels)).astype(np.float32)
    x_lens, ylens = np.array([23, 17]), np.array([39, 30])
    batch = np.asarray(s2mel.length_regulate(params, cfg, x, ylens, x_lens=x_lens))
    for b in range(2):
        single = s2mel.length_regulate(params, cfg, x[b:b + 1, : x_lens[b]], ylens[b:b + 1])
        assert_close(batch[b:b + 1, : ylens[b]], single, TOL, f"item {b}")
        assert np.all(batch[b, ylens[b]:] == 0)


def test_estimator_per_item_padding_equals_single():
    """With per_item_padding, a padded item's valid frames equal its unpadded B=1 run."""
    case = _case("dit_estimator")
    cfg = s2mel.S2MelConfig.from_official(case.config)
    params = s2mel.estimator_from_torch(case.params, cfg)
    i = case.inputs
    n = int(i["x_lens"][1])
    batch = s2mel.estimate_official_layout(params, cfg, i["x"], i["prompt_x"], i["x_lens"], i["t"], i["style"],
                                           i["cond"], per_item_padding=True)
    single = s2mel.estimate_official_layout(params, cfg, i["x"][1:, :, :n], i["prompt_x"][1:, :, :n],
                                            i["x_lens"][1:], i["t"][1:], i["style"][1:], i["cond"][1:, :n])
    assert_close(np.asarray(batch)[1:, :, :n], single, TOL, "per-item item 1")


def test_from_torch_is_strict():
    case = _case("dit_estimator")
    cfg = s2mel.S2MelConfig.from_official(case.config)
    extra = dict(case.params, **{"estimator.surprise.weight": np.zeros(3, np.float32)})
    with pytest.raises(CheckpointError, match="surprise"):
        s2mel.estimator_from_torch(extra, cfg)
    partial = {k: v for k, v in case.params.items() if "conv2" not in k}
    with pytest.raises(CheckpointError, match="conv2"):
        s2mel.estimator_from_torch(partial, cfg)
    # DDP prefixes are accepted.
    s2mel.estimator_from_torch({"module." + k: v for k, v in case.params.items()}, cfg)


def test_config_rejects_unsupported_flags():
    case = _case("dit_estimator")
    bad = dict(case.config, DiT=dict(case.config["DiT"], time_as_token=True))
    with pytest.raises(ConfigError, match="time_as_token"):
        s2mel.S2MelConfig.from_official(bad)
    full = s2mel.S2MelConfig()
    assert (full.dit.hidden_dim, full.dit.depth, full.dit.num_heads, full.wavenet.num_layers) == (512, 13, 8, 8)
    assert list(full.target_frames([50, 13, 100])) == [86, 22, 172]
