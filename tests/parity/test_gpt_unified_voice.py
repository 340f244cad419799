"""Parity of UnifiedVoice (conditioning, emovec, teacher-forced logits and latent, generation) with the
official model_v2.UnifiedVoice (reference §5).

Float outputs: max relative error 1e-4 (float32 both sides; summation order only; measured ~1e-6).
Integer outputs (aligned inputs/targets, masks, generated codes): exactly equal.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from indextts2_jax.models.gpt import UnifiedVoice, UnifiedVoiceConfig, from_torch
from tests.parity.cases import assert_close, cases, get_case

TOL = 1e-4


def _load(case_path):
    case = get_case(case_path)
    cfg = UnifiedVoiceConfig.from_official(case.config)
    return case, cfg, from_torch(case.params, cfg), UnifiedVoice(cfg)


def _forward_all(model, params, inp, has_codes, codes):
    """Every conditioning / teacher-forced output of one case, in one jitted call (one compile)."""

    def run(p, inp, codes):
        def call(name, *args, **kw):
            return model.apply({"params": p}, *args, method=getattr(UnifiedVoice, name), **kw)

        spk, spk_len = inp["spk_cond_emb"], inp["cond_lengths"]
        emo, emo_len = inp["emo_cond_emb"], inp["emo_cond_lengths"]
        text = inp["text_tokens"]
        r = {}
        r["spk_cond_latent"], r["spk_conformer_out"], r["spk_conformer_mask"] = call(
            "speaker_conditioning", spk, spk_len, return_conformer=True)
        r["emo_perceiver_out_emo"], r["emo_conformer_out"], r["emo_conformer_mask"] = call(
            "emotion_conditioning", emo, emo_len, return_conformer=True)
        r["emovec_emo"] = call("emovec", emo, emo_len)
        r["emovec_spk"] = call("emovec", spk, spk_len)
        r["emovec"] = call("merge_emovec", spk, spk_len, emo, emo_len, inp["emo_alpha"])
        if has_codes:  # infer_v2 path: spk latent given, emovec = merge_emovec, codes = trimmed rp10 run
            conds = call("conditioning_block", r["spk_cond_latent"], r["emovec"])
            text_lengths = jnp.full((text.shape[0],), text.shape[1])
            tf = call("teacher_forced", conds, text, text_lengths, codes, jnp.full((codes.shape[0],), codes.shape[1]))
            prefix_lengths = None
        else:  # training forward: conditioning and emovec computed inside, padded batch
            tf = model.apply({"params": p}, spk, spk_len, emo, emo_len, text, inp["text_lengths"], inp["mel_codes"],
                             inp["mel_code_lengths"])
            conds = tf["conds"]
            prefix_lengths = inp["text_lengths"]
        r["conds"] = conds
        r.update(tf)
        r["gen_prefix_embeds"], r["gen_prefix_mask"] = call("generation_prefix", conds, text, prefix_lengths)
        return r

    return jax.jit(run)(params, {k: jnp.asarray(v) for k, v in inp.items()}, codes)


@pytest.mark.parametrize("case_path", cases("gpt_unified_voice"))
def test_conditioning_and_teacher_forcing(case_path):
    case, cfg, params, model = _load(case_path)
    inp, out = case.inputs, case.outputs
    has_codes = "codes" in out
    r = _forward_all(model, params, inp, has_codes, jnp.asarray(out["codes"]) if has_codes else None)
    for name in ["spk_cond_latent", "emo_perceiver_out_emo", "emovec_emo", "conds", "latent", "gen_prefix_embeds"]:
        assert_close(r[name], out[name], TOL, name)
    if "spk_conformer_out" in out:
        for name in ["spk_conformer_out", "emo_conformer_out"]:
            assert_close(r[name], out[name], TOL, name)
        for name in ["spk_conformer_mask", "emo_conformer_mask"]:
            np.testing.assert_array_equal(np.asarray(r[name]), out[name][:, 0])
    if "emovec_spk" in out:
        assert_close(r["emovec_spk"], out["emovec_spk"], TOL, "emovec_spk")
    assert_close(r["emovec"], out["emovec"] if has_codes else out["emovec_merged"], TOL, "merged emovec")
    if has_codes:
        assert_close(r["conds"], out["gen_conds_latent"], TOL, "gen_conds_latent")
    np.testing.assert_array_equal(np.asarray(r["text_inputs"]), out["text_inputs_aligned"])
    np.testing.assert_array_equal(np.asarray(r["text_targets"]), out["text_targets"])
    np.testing.assert_array_equal(np.asarray(r["mel_inputs"]), out["mel_inputs_aligned"])
    np.testing.assert_array_equal(np.asarray(r["mel_targets"]), out["mel_targets"])
    assert_close(jnp.swapaxes(r["text_logits"], 1, 2), out["text_logits"], TOL, "text_logits")
    assert_close(jnp.swapaxes(r["mel_logits"], 1, 2), out["mel_logits"], TOL, "mel_logits")
    np.testing.assert_array_equal(np.asarray(r["gen_prefix_mask"]), out["gen_attention_mask"][:, :-1].astype(bool))


@pytest.mark.parametrize("case_path", cases("gpt_unified_voice"))
def test_generation(case_path):
    """Greedy (and, where stored, greedy + repetition penalty 10 and deterministic beam 3) codes equal the
    official ones exactly; per-step raw logits (and penalized scores) within TOL."""
    from indextts2_jax.infer.generate import DecodeConfig, generate

    case, cfg, params, model = _load(case_path)
    inp, out = case.inputs, case.outputs
    conds = jnp.asarray(out["gen_conds_latent"] if "gen_conds_latent" in out else out["conds"])  # checked above
    text = jnp.asarray(inp["text_tokens"])
    text_lengths = jnp.asarray(inp["text_lengths"]) if "text_lengths" in inp else None
    n = int(inp["max_generate_length"])
    runs = [("gen_greedy", 1.0)] + ([("gen_rp10", 10.0)] if "gen_rp10_codes" in out else [])
    for key, penalty in runs:
        res = generate(model, params, conds, text, text_lengths,
                       decode=DecodeConfig.greedy(n, repetition_penalty=penalty, return_logits=True))
        expected = out[f"{key}_codes"]
        steps = int(res.steps)
        assert steps == expected.shape[1]
        np.testing.assert_array_equal(np.asarray(res.codes)[:, :steps], expected, err_msg=key)
        assert_close(res.logits[:steps], out[f"{key}_logits"], TOL, f"{key} logits")
        if f"{key}_scores" in out:
            assert_close(res.scores[:steps], out[f"{key}_scores"], TOL, f"{key} scores")
    if "gen_beam3_codes" in out:
        res = generate(model, params, conds, text, text_lengths,
                       decode=DecodeConfig(max_new_tokens=n, do_sample=False, num_beams=3, repetition_penalty=10.0,
                                           length_penalty=0.0))
        expected = out["gen_beam3_codes"]
        np.testing.assert_array_equal(np.asarray(res.codes)[:, : expected.shape[1]], expected)
        assert_close(res.sequence_scores, out["gen_beam3_sequence_scores"], TOL, "beam sequence score")


def test_converter_is_strict():
    """Known extras are ignored, a nested {"model": ...} dict is accepted, anything else fails loudly."""
    from indextts2_jax.errors import CheckpointError

    case_path = cases("gpt_unified_voice")[0].values[0]
    case = get_case(case_path)
    cfg = UnifiedVoiceConfig.from_official(case.config)
    sd = dict(case.params)
    extras = {
        "gpt.h.0.attn.bias": np.tril(np.ones((1, 1, 4, 4), bool)),
        "gpt.h.0.attn.masked_bias": np.float32(-1e4),
        "inference_model.lm_head.1.weight": sd["mel_head.weight"],
        "gpt.wte.weight": sd["mel_embedding.weight"],
    }
    params = from_torch({"model": {**sd, **extras}}, cfg)
    np.testing.assert_array_equal(params["mel_head"]["kernel"], sd["mel_head.weight"].T)
    with pytest.raises(CheckpointError, match="unexpected"):
        from_torch({**sd, "lang_embedding.weight": np.zeros((3, cfg.model_dim), np.float32)}, cfg)
    missing = dict(sd)
    del missing["speed_emb.weight"]
    with pytest.raises(CheckpointError, match="speed_emb"):
        from_torch(missing, cfg)
    bad_pe = dict(sd)
    bad_pe["conditioning_encoder.embed.pos_enc.pe"] = sd["conditioning_encoder.embed.pos_enc.pe"] + 1.0
    with pytest.raises(CheckpointError, match="sinusoid"):
        from_torch(bad_pe, cfg)
