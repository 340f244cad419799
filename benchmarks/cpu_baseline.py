"""Our side of every row of the official CPU baseline table, in one process, at the official sizes.

    python -m benchmarks.cpu_baseline                       # all rows (~10 min on 2 cores), float32
    python -m benchmarks.cpu_baseline --stages campplus,bigvgan --json ours.json
    python -m benchmarks.cpu_baseline --tiny                # smoke run of the script itself (seconds)

``shared/reference/official-cpu-baseline.md`` times the official PyTorch inference stage by stage;
this script times the same stages with the same inputs (random weights, float32, batch 1): a 10 s
speaker prompt (w2v-BERT, conditioning, CAMPPlus), a 3 s prompt mel (258 frames) for S2M, 10 s of
output (500 codes, 860 mel frames), a 30-token text. Host-side front-ends that the official rows
include are timed here too (SeamlessM4T features for w2v-BERT, the Kaldi fbank for CAMPPlus).
``benchmarks/official_torch.py`` times the official code on the same machine, so that both sides
are measured in one sitting (the baseline file was measured on another CPU).

Timing: median of ``--repeats`` (3) calls after a warm-up call (compilation excluded, reported
apart); the 500-code generations: one timed call after the warm-up. Per-token decode times are
``(t(N + 1 codes) - t(1 code)) / N`` with every generation forced to emit exactly N codes.

Columns: stage, input -> output, ours (s), per token (s, decode rows), compile (s).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import call_times, random_like

STAGES = ("w2v_bert", "codec", "campplus", "speaker_cond", "emotion_cond", "gpt_prefill", "gpt_greedy",
          "gpt_greedy_500", "gpt_beam3", "gpt_beam3_500", "gpt_latent", "s2mel_step", "s2mel", "bigvgan")


def _median_time(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(first call seconds = compile + run, median of ``repeats`` later calls)."""
    first, times = call_times(fn, repeats)
    return first, statistics.median(times)


class Bench:
    def __init__(self, tiny: bool, repeats: int):
        self.tiny, self.repeats = tiny, repeats
        self.rows: list[dict] = []
        self.rng = np.random.default_rng(0)
        self.prompt_seconds = 2.0 if tiny else 10.0
        self.out_codes = 20 if tiny else 500
        self.decode_codes = 10 if tiny else 100
        self.text_len = 30

    def add(self, stage: str, what: str, seconds: float, compile_s: float, per_token: float | None = None):
        row = {"stage": stage, "what": what, "ours_s": round(seconds, 4), "compile_s": round(compile_s, 1)}
        if per_token is not None:
            row["per_token_s"] = round(per_token, 5)
        self.rows.append(row)
        extra = f"  ({per_token * 1e3:.1f} ms/token)" if per_token is not None else ""
        print(f"{stage:16s} {what:44s} {seconds:9.4f} s{extra}  [compile {compile_s:.1f} s]", flush=True)

    # -- configs -------------------------------------------------------------------------------
    def gpt_config(self):
        from indextts2_jax.models.gpt import UnifiedVoiceConfig

        if self.tiny:
            from benchmarks.gpt_decode import tiny_config

            return tiny_config()
        return UnifiedVoiceConfig()

    def wave(self, sr: int, seconds: float) -> np.ndarray:
        t = np.arange(int(sr * seconds)) / sr
        return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * self.rng.normal(size=t.shape)).astype(np.float32)

    # -- semantic front-end ----------------------------------------------------------------------
    def semantic(self, stages):
        from benchmarks.semantic import SIZES
        from indextts2_jax import audio
        from indextts2_jax.models import semantic_codec as sc
        from indextts2_jax.models import w2v_bert

        w_cfg, c_cfg = SIZES["tiny" if self.tiny else "official"]
        wave16 = self.wave(16000, self.prompt_seconds)
        layers = w_cfg.layers_for_embedding
        params = random_like(w2v_bert._abstract_params(w_cfg, layers), 0)
        model = w2v_bert.W2VBert(w_cfg, num_layers=layers)
        mean = jnp.zeros((w_cfg.hidden_size,))
        var = jnp.ones((w_cfg.hidden_size,))

        @jax.jit
        def embed(p, feats, mask):
            hidden = model.apply({"params": p}, feats, mask, return_all=False)
            return w2v_bert.normalize_hidden(hidden, mean, var)

        def run():
            feats, mask = audio.w2v_bert_features([wave16])
            return embed(params, jnp.asarray(feats), jnp.asarray(mask))

        hidden = run()
        if "w2v_bert" in stages:
            first, t = _median_time(run, self.repeats)
            self.add("w2v_bert", f"{self.prompt_seconds:g} s prompt -> {tuple(hidden.shape)}", t, first - t)
        if "codec" in stages:
            c_params = random_like(sc._abstract_params(c_cfg), 1)
            mask = jnp.ones(hidden.shape[:2], bool)
            first, t = _median_time(lambda: sc.codec_quantize(c_params, hidden, c_cfg, mask), self.repeats)
            self.add("codec", f"{tuple(hidden.shape)} -> codes", t, first - t)
        return hidden

    def campplus(self):
        from benchmarks.vocoder import tiny_configs
        from indextts2_jax import audio
        from indextts2_jax.models import campplus

        cfg = tiny_configs()[0] if self.tiny else campplus.CAMPPlusConfig()
        variables = random_like(campplus.abstract_variables(cfg), 0)
        model = campplus.CAMPPlus(cfg)
        fwd = jax.jit(lambda v, f: model.apply(v, f))
        wave16 = self.wave(16000, self.prompt_seconds)

        def run():
            fbank = audio.campplus_features(wave16[None])
            return fwd(variables, jnp.asarray(fbank))

        first, t = _median_time(run, self.repeats)
        self.add("campplus", f"{self.prompt_seconds:g} s prompt -> fbank + model", t, first - t)

    # -- GPT -----------------------------------------------------------------------------------
    def gpt(self, stages, hidden):
        from indextts2_jax.infer.generate import DecodeConfig, _generate_jit, _split
        from indextts2_jax.models.gpt import UnifiedVoice, abstract_params

        cfg = self.gpt_config()
        model = UnifiedVoice(cfg)
        params = random_like(abstract_params(cfg), 0)
        feat_dim = cfg.condition_input_size
        t_prompt = hidden.shape[1]
        feats = jnp.asarray(self.rng.normal(size=(1, t_prompt, feat_dim)), jnp.float32)
        lens = jnp.array([t_prompt], jnp.int32)

        if "speaker_cond" in stages:
            f = jax.jit(lambda p, x, n: model.apply({"params": p}, x, n, method=UnifiedVoice.speaker_conditioning))
            first, t = _median_time(lambda: f(params, feats, lens), self.repeats)
            self.add("speaker_cond", f"(1,{t_prompt},{feat_dim}) -> (1,{cfg.condition_num_latent},{cfg.model_dim})", t,
                     first - t)
        if "emotion_cond" in stages:
            f = jax.jit(lambda p, x, n: model.apply({"params": p}, x, n, method=UnifiedVoice.emovec))
            first, t = _median_time(lambda: f(params, feats, lens), self.repeats)
            self.add("emotion_cond", f"(1,{t_prompt},{feat_dim}) -> (1,{cfg.model_dim})", t, first - t)

        conds = jnp.asarray(self.rng.normal(size=(1, cfg.cond_rows, cfg.model_dim)), jnp.float32)
        text = jnp.asarray(self.rng.integers(2, cfg.number_text_tokens, (1, self.text_len)), jnp.int32)
        text_lens = jnp.array([self.text_len], jnp.int32)
        key = jax.random.key(1)

        def generation(n: int, beams: int, sample: bool, first_only: bool = False):
            decode = DecodeConfig(max_new_tokens=(1 if first_only else n + 1), num_beams=beams, do_sample=sample,
                                  repetition_penalty=10.0)
            static, knobs = _split(decode)
            target = jnp.array([n], jnp.int32)
            inputs = (params, conds, text, text_lens, key, target)
            t0 = time.perf_counter()
            program = _generate_jit.lower(model, static, knobs, *inputs).compile()
            compile_s = time.perf_counter() - t0
            return (lambda: program(knobs, *inputs).codes), compile_s

        prefix_len = cfg.cond_rows + self.text_len + 3  # conds, start_text, text, stop_text, start_mel

        def cond_all(p, x, n):  # infer_v2 conditions every generation on the prompt (speaker + emotion paths)
            return (model.apply({"params": p}, x, n, method=UnifiedVoice.speaker_conditioning),
                    model.apply({"params": p}, x, n, method=UnifiedVoice.emovec))

        cond_all = jax.jit(cond_all)
        if "gpt_prefill" in stages or "gpt_greedy" in stages:
            one, c1 = generation(self.decode_codes, 1, False, first_only=True)
            _, t_one = _median_time(one, self.repeats)
            if "gpt_prefill" in stages:
                self.add("gpt_prefill", f"{prefix_len} positions + first code", t_one, c1)
        for name, beams, sample, n in (("gpt_greedy", 1, False, self.decode_codes),
                                       ("gpt_beam3", 3, True, self.decode_codes),
                                       ("gpt_greedy_500", 1, False, self.out_codes),
                                       ("gpt_beam3_500", 3, True, self.out_codes)):
            if name not in stages:
                continue
            full, c = generation(n, beams, sample)
            if name.endswith("_500"):
                def whole(full=full):
                    jax.block_until_ready(cond_all(params, feats, lens))
                    return full()

                jax.block_until_ready(whole())
                t0 = time.perf_counter()
                jax.block_until_ready(whole())
                t = time.perf_counter() - t0
                self.add(name, f"text {self.text_len} -> {n} codes (conditioning + generation)", t, c, t / n)
            else:
                one, _ = generation(n, beams, sample, first_only=True)
                _, t_one = _median_time(one, self.repeats)
                _, t = _median_time(full, self.repeats)
                self.add(name, f"{n} codes, batch 1, {beams} beam(s)", t, c, (t - t_one) / n)

        if "gpt_latent" in stages:
            from indextts2_jax.infer.pipeline import _packed_latent

            n = self.out_codes
            codes = jnp.asarray(self.rng.integers(0, cfg.number_mel_codes - 2, (1, n)), jnp.int32)
            code_lens = jnp.array([n], jnp.int32)
            f = jax.jit(lambda p, *a: model.apply({"params": p}, *a, method=_packed_latent))
            first, t = _median_time(lambda: f(params, conds, text, text_lens, codes, code_lens), self.repeats)
            self.add("gpt_latent", f"teacher forced, {n} codes -> (1,{n},{cfg.model_dim})", t, first - t)

    # -- S2M and vocoder -------------------------------------------------------------------------
    def s2mel(self, stages):
        from benchmarks.s2mel import tiny_config
        from indextts2_jax.models import s2mel

        cfg = tiny_config() if self.tiny else s2mel.S2MelConfig()
        target, prompt = (40, 20) if self.tiny else (860, 258)
        params = random_like(s2mel.abstract_params(cfg)["estimator"], 0)
        key = jax.random.split(jax.random.key(1), 4)
        t_len = target + prompt
        if "s2mel_step" in stages:
            x = jax.random.normal(key[0], (2, t_len, cfg.n_mels))
            prompt_x = jax.random.normal(key[1], (2, t_len, cfg.n_mels))
            cond = jax.random.normal(key[2], (2, t_len, cfg.dit.content_dim))
            style = jax.random.normal(key[3], (2, cfg.style_dim))
            lens = jnp.full((2,), t_len, jnp.int32)
            t = jnp.full((2,), 0.5)
            f = jax.jit(lambda p, *a: s2mel.estimate(p, cfg, *a))
            first, sec = _median_time(lambda: f(params, x, prompt_x, lens, t, style, cond), self.repeats)
            self.add("s2mel_step", f"one DiT call (2,{cfg.n_mels},{t_len})", sec, first - sec)
        if "s2mel" in stages:
            from benchmarks.s2mel import bench_cfm

            row = bench_cfm(cfg, target_frames=target, prompt_frames=prompt, steps=25, repeats=self.repeats)
            self.add("s2mel", f"25 Euler steps, CFG -> (1,{cfg.n_mels},{target})", float(row["CFM (s)"]),
                     float(row["compile (s)"]))

    def bigvgan(self):
        from benchmarks.vocoder import bench_bigvgan, tiny_configs
        from indextts2_jax.models import bigvgan

        cfg = tiny_configs()[1] if self.tiny else bigvgan.BigVGANConfig()
        frames = 32 if self.tiny else 861
        row = bench_bigvgan(cfg, frames=frames, repeats=self.repeats)
        self.add("bigvgan", f"(1,{cfg.num_mels},{frames}) -> waveform", float(row["time (s)"]),
                 float(row["compile (s)"]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma list of {', '.join(STAGES)}")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tiny", action="store_true", help="tiny models (checks the script, not a measurement)")
    p.add_argument("--json", default="", help="also write the rows to this file")
    args = p.parse_args(argv)
    stages = tuple(s for s in args.stages.split(",") if s)
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        p.error(f"unknown stages {unknown}; known: {', '.join(STAGES)}")
    b = Bench(args.tiny, args.repeats)
    print(f"device: {jax.devices()[0].platform}, float32, {'tiny' if args.tiny else 'official'} sizes")
    hidden = None
    if {"w2v_bert", "codec"} & set(stages):
        hidden = b.semantic(stages)
    if "campplus" in stages:
        b.campplus()
    gpt_stages = {s for s in stages if s.startswith("gpt") or s.endswith("_cond")}
    if gpt_stages:
        if hidden is None:
            n = int(b.prompt_seconds * 50) - 1
            hidden = jnp.zeros((1, n, 1024))
        b.gpt(stages, hidden)
    if {"s2mel", "s2mel_step"} & set(stages):
        b.s2mel(stages)
    if "bigvgan" in stages:
        b.bigvgan()
    print()
    print("| stage | input -> output | ours s | per token s | compile s |")
    print("|---|---|---|---|---|")
    for r in b.rows:
        print(f"| {r['stage']} | {r['what']} | {r['ours_s']} | {r.get('per_token_s', '')} | {r['compile_s']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": jax.devices()[0].platform, "tiny": args.tiny, "rows": b.rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
