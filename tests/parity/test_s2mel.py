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

import dataclasses

import jax
import numpy as np
import pytest

from indextts2_jax.errors import CheckpointError, ConfigError
from indextts2_jax.models import s2mel
from indextts2_jax.nn.dit import timestep_frequencies
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


def _config(case, attention: str = "einsum") -> s2mel.S2MelConfig:
    cfg = s2mel.S2MelConfig.from_official(case.config)
    return dataclasses.replace(cfg, dit=dataclasses.replace(cfg.dit, attention=attention))


def _check_dit_estimator(case, attention: str = "einsum"):
    cfg = _config(case, attention)
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


def _check_cfm_inference(case, attention: str = "einsum"):
    cfg = _config(case, attention)
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


def _check_pipeline(case, attention: str = "einsum"):
    cfg = _config(case, attention)
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


DIT_CASES = ("dit_estimator", "cfm_inference", "pipeline")


@pytest.mark.parametrize("case_path", [c for c in cases("s2mel") if c.id.split("/")[-1] in DIT_CASES + ("MISSING",)])
def test_s2mel_parity_with_fused_attention(case_path):
    """The DiT through ``jax.nn.dot_product_attention`` (its XLA implementation; the cuDNN one is the same call on
    a GPU) meets the official outputs at the same tolerances, key-padded rows included."""
    case = get_case(case_path)
    CHECKS[case.name](case, attention="xla")


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


def test_pipeline_batched_items_match_single_runs():
    """B=2 with per-item lengths: item 0 is the fixture (must match the official outputs), item 1 is
    shorter everywhere (must match its own B=1 run)."""
    case = _case("pipeline")
    cfg = s2mel.S2MelConfig.from_official(case.config)
    params = s2mel.from_torch(case.params, cfg)
    i, o = case.inputs, case.outputs
    rng = np.random.default_rng(1)
    s_len, p_len, m = 11, 18, 9
    g = int(cfg.target_frames([m])[0])
    one = {
        "S_ref": rng.standard_normal((1, s_len, 1024)).astype(np.float32),
        "ref_mel": rng.standard_normal((1, p_len, 80)).astype(np.float32),
        "style": rng.standard_normal((1, 192)).astype(np.float32),
        "gpt_latent": rng.standard_normal((1, m, 1280)).astype(np.float32),
        "S_code_emb": rng.standard_normal((1, m, 1024)).astype(np.float32),
        "noise": rng.standard_normal((1, p_len + g, 80)).astype(np.float32),
    }
    full = {"S_ref": i["S_ref"], "ref_mel": _t(i["ref_mel"]), "style": i["style"], "gpt_latent": i["gpt_latent"],
            "S_code_emb": i["S_code_emb"], "noise": _t(i["noise"])}

    def pad_stack(name):
        a, b = full[name], one[name]
        if a.ndim == 3:
            b = np.pad(b, ((0, 0), (0, a.shape[1] - b.shape[1]), (0, 0)))
        return np.concatenate([a, b], axis=0)

    batch = {k: pad_stack(k) for k in full}
    kw = dict(n_steps=int(i["n_timesteps"]), cfg_rate=float(i["inference_cfg_rate"]), return_intermediates=True)
    got = s2mel.synthesize_mel(
        params, cfg, batch["S_ref"], batch["ref_mel"], batch["style"], batch["gpt_latent"], batch["S_code_emb"],
        np.array([i["code_lens"][0], m]), noise=batch["noise"], ref_lens=np.array([i["ref_mel"].shape[-1], p_len]),
        S_ref_lens=np.array([i["S_ref"].shape[1], s_len]), **kw,
    )
    assert list(got["target_lengths"]) == [int(o["target_lengths"][0]), g]
    assert_close(_t(got["vc_target"][:1]), o["vc_target"], TOL_CFM, "batched item 0 vs official")
    single = s2mel.synthesize_mel(params, cfg, one["S_ref"], one["ref_mel"], one["style"], one["gpt_latent"],
                                  one["S_code_emb"], noise=one["noise"], **kw)
    assert_close(got["vc_target"][1:, :g], single["vc_target"], TOL_CFM, "batched item 1 vs single")
    assert np.all(np.asarray(got["vc_target"])[1, g:] == 0)


def test_from_torch_accepts_s2mel_pth_layout():
    """``{"net": {entry: state_dict}, "optimizer": ..., ...}`` with DDP prefixes converts like the flat keys."""
    case = _case("pipeline")
    cfg = s2mel.S2MelConfig.from_official(case.config)
    net: dict = {}
    for k, v in case.params.items():
        entry, _, rest = k[len("models."):].partition(".")
        net.setdefault(entry, {})["module." + rest] = v
    ckpt = {"net": net, "optimizer": {"state": {}}, "scheduler": {}, "epoch": 3, "iters": 100}
    a = s2mel.from_torch(ckpt, cfg)
    b = s2mel.from_torch({"net." + k[len("models."):]: v for k, v in case.params.items()}, cfg)
    for (pa, la), (pb, lb) in zip(*(jax.tree_util.tree_leaves_with_path(t) for t in (a, b))):
        assert pa == pb and np.array_equal(la, lb)
    del net["gpt_layer"]
    with pytest.raises(CheckpointError, match="gpt_layer"):
        s2mel.from_torch(ckpt, cfg)


def test_init_params_carry_logical_axes():
    """Boxed init exposes logical axis names (for sharding rules); unboxed init matches the converter tree."""
    import flax.linen as nn

    cfg = _tiny_config()
    boxed = jax.eval_shape(lambda k: s2mel.init_params(cfg, k, unbox=False), jax.random.key(0))
    specs = nn.get_partition_spec(boxed)
    assert tuple(specs["estimator"]["transformer"]["layers_0"]["attention"]["wqkv"]["kernel"]) == ("embed", "heads")
    assert tuple(specs["estimator"]["wavenet"]["in_layers_0"]["kernel"]) == ("kernel", "conv_in", "conv_out")
    plain = jax.eval_shape(lambda k: s2mel.init_params(cfg, k), jax.random.key(0))
    assert jax.tree_util.tree_structure(plain) == jax.tree_util.tree_structure(s2mel.abstract_params(cfg))


# ------------------------------------------------------------------------------------------------
# Training loss
# ------------------------------------------------------------------------------------------------


def _tiny_config():
    return s2mel.S2MelConfig(
        length_regulator=s2mel.LengthRegulatorConfig(channels=8, in_channels=16),
        dit=s2mel.DiTConfig(hidden_dim=16, num_heads=2, depth=3, content_dim=8),
        wavenet=s2mel.WaveNetConfig(hidden_dim=16, num_layers=2),
        style_dim=4,
    )


def _random_estimator_params(cfg, seed):
    """Random estimator params with NumPy (shapes from abstract_params; avoids compiling the jitted init)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "freqs" in name:
            return timestep_frequencies()
        scale = 1.0 / np.sqrt(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 0.1
        return (scale * rng.standard_normal(leaf.shape)).astype(np.float32) + ("weight" in name or "scale" in name)

    return jax.tree_util.tree_map_with_path(draw, s2mel.abstract_params(cfg)["estimator"])


def _loss_batch(cfg, seed=0):
    rng = np.random.default_rng(seed)
    b, t = 2, 24
    return {
        "x1": rng.standard_normal((b, t, cfg.n_mels)).astype(np.float32),
        "mu": rng.standard_normal((b, t, cfg.dit.content_dim)).astype(np.float32),
        "style": rng.standard_normal((b, cfg.style_dim)).astype(np.float32),
        "prompt_lens": np.array([5, 8]),
        "x_lens": np.array([24, 17]),
    }


def test_cfm_loss_masks():
    cfg = _tiny_config()
    params = _random_estimator_params(cfg, 0)
    # Make the estimator blind to prompt_x, so the prompt frames of x1 can only reach the loss through
    # y/u, which the loss must exclude.
    k = np.array(params["cond_x_merge_linear"]["kernel"])
    k[cfg.n_mels: 2 * cfg.n_mels] = 0
    params = dict(params, cond_x_merge_linear=dict(params["cond_x_merge_linear"], kernel=k))
    batch = _loss_batch(cfg)
    key = jax.random.key(3)
    loss_fn = jax.jit(lambda p, bt: s2mel.cfm_loss(p, cfg, key=key, **bt)[0])
    base = float(loss_fn(params, batch))
    assert np.isfinite(base) and base > 0

    changed = {k: np.array(v) for k, v in batch.items()}
    changed["x1"][0, :5] += 3.0  # prompt frames of item 0
    changed["x1"][1, :8] -= 2.0  # prompt frames of item 1
    changed["x1"][1, 17:] = 100.0  # padded frames of item 1
    changed["mu"][1, 17:] = -50.0
    assert abs(float(loss_fn(params, changed)) - base) <= 1e-6 * base

    target = {k: np.array(v) for k, v in batch.items()}
    target["x1"][1, 10] += 1.0  # a valid, non-prompt frame: must change the loss
    assert abs(float(loss_fn(params, target)) - base) > 1e-4 * base


def test_cfm_loss_decreases_with_adam():
    import optax

    cfg = _tiny_config()
    params = _random_estimator_params(cfg, 1)
    batch = _loss_batch(cfg, seed=2)
    opt = optax.adam(3e-3)
    state = opt.init(params)

    def loss(p, key):
        return s2mel.cfm_loss(p, cfg, key=key, cond_drop_prob=0.0, **batch)[0]

    @jax.jit
    def step(p, s, key):
        value, grads = jax.value_and_grad(loss)(p, key)
        updates, s = opt.update(grads, s, p)
        return optax.apply_updates(p, updates), s, value

    # One fixed noise/time draw: the objective is deterministic, so a few Adam steps must lower it.
    key = jax.random.key(7)
    params, state, before = step(params, state, key)
    for _ in range(30):
        params, state, after = step(params, state, key)
    before, after = float(before), float(after)
    assert np.isfinite(after) and after < 0.9 * before, (before, after)


def test_reflect_pad_matches_sconv1d_pad1d():
    """SConv1d's pad1d(mode='reflect') zero-extends sequences no longer than the padding before reflecting."""

    def pad1d_reference(x, left, right):
        extra = max(left, right) - len(x) + 1 if len(x) <= max(left, right) else 0
        padded = np.pad(np.pad(x, (0, extra)), (left, right), mode="reflect")
        return padded[: len(padded) - extra]

    for t in (1, 2, 5):
        x = np.arange(1, t + 1, dtype=np.float32)
        for left, right in ((2, 2), (4, 4)):
            got = np.asarray(s2mel.reflect_pad_time(x[None, :, None], np.array([t]), left, right))[0, :, 0]
            np.testing.assert_array_equal(got, pad1d_reference(x, left, right), err_msg=f"T={t} pad={left},{right}")
