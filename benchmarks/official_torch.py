"""Time the official IndexTTS-2 PyTorch inference stage by stage on this machine (the baseline to beat).

Re-measures shared/reference/official-cpu-baseline.md on the machine at hand, so that the official code and
ours are timed in one sitting. Every module is the official class at full official size, built with random
weights (torch default init; no checkpoint is read), float32, CPU, eval mode, under ``torch.inference_mode``,
with ``--threads`` torch threads (2 by default).

    <official venv>/bin/python benchmarks/official_torch.py --official_repo /path/to/index-tts
    <official venv>/bin/python benchmarks/official_torch.py --official_repo ... --stages codec,bigvgan --json t.json

The official code is imported from ``--official_repo`` (a local checkout of index-tts/index-tts, the baseline used
commit ee40fa7). This script never downloads it, nor any weights: it only reads that directory. Module kwargs come
from ``<official_repo>/checkpoints/config.yaml`` when present, else from our ``tests/data/official_config.yaml``
(the same file), or ``--config``; BigVGAN's from ``indextts/s2mel/modules/bigvgan/config.json`` in the official
repo (the nvidia/bigvgan_v2_22khz_80band_256x generator); w2v-BERT's from transformers' ``Wav2Vec2BertConfig``
with the facebook/w2v-bert-2.0 values (as ``configs/indextts2.py`` lists them); CAMPPlus(feat_dim=80,
embedding_size=192) as infer_v2 builds it.

Setting up the official venv (kept apart from our .venv; torch==2.13.0 takes the local CPU wheel):

    python3 -m venv /work/official/venv
    /work/official/venv/bin/pip install torch==2.13.0 transformers==4.52.1
    /work/official/venv/bin/pip install einops munch==4.0.0 omegaconf librosa==0.10.2.post1 matplotlib \
        flatten-dict ffmpy importlib-resources rich tensorboard randomname argbind
    /work/official/venv/bin/pip install --no-deps torchaudio==2.11.0 openai-whisper tiktoken more-itertools \
        descript-audiotools==0.7.2 julius
    rm /work/official/venv/lib/python3.11/site-packages/torchaudio/lib/*.so

(The --no-deps packages would pull another torch. whisper is imported by the official GPT module for a language
table only; audiotools (and its pure-Python deps on the first line) by the S2M length regulator's package. The
registry has no torchaudio 2.13, and the 2.11 wheel's compiled extension links CUDA torch: with its .so files
removed torchaudio runs as pure Python, which is all that ``compliance.kaldi.fbank`` needs.)

Workloads (scenario of the baseline: 10 s speaker prompt, 3 s prompt mel for S2M, 10 s of output = 500 codes,
860 mel frames; text of 30 BPE tokens, so the GPT prefill covers 32 + 2 + 30 + 2 + 1 = 67 positions):

- ``w2v_bert``: SeamlessM4T features of 10 s at 16 kHz + the 24-layer Wav2Vec2BertModel (all layers run, as
  infer_v2 asks for every hidden state), hidden_states[17] normalised -> (1,499,1024).
- ``codec``: semantic codec ``quantize`` (1,499,1024) -> codes (1,499).
- ``campplus``: Kaldi fbank (80 bins) of 10 s at 16 kHz, minus its time mean, + CAMPPlus -> (1,192).
- ``spk_cond``: ``get_conditioning`` (conformer 6 blocks + perceiver 32 latents) (1,499,1024) -> (1,32,1280).
- ``emo_cond``: ``get_emovec`` (conformer 4 blocks + perceiver 1 latent + 2 Linear) -> (1,1280).
- ``gpt_prefill``: one forward of the GPT inference model over the 67 prompt positions (KV cache on).
- ``gpt_greedy`` / ``gpt_beam``: ``generate`` of exactly 100 codes, greedy batch 1 / the official default
  decoding (3 beams with sampling, top_k 30, top_p 0.8, temperature 0.8); repetition_penalty 10 and
  length_penalty 0 as infer_v2 passes them. Per token = the mean interval between consecutive decode steps,
  stamped by a logits processor appended after the official ones (prefill excluded).
- ``gpt_greedy_500`` / ``gpt_beam_500``: infer_v2's GPT generation time for 500 codes: ``merge_emovec`` +
  ``inference_speech`` (speaker conditioning included). Timed once after a 10-code warm-up.
- ``gpt_latent``: the teacher-forced GPT forward over 500 codes -> (1,500,1280).
- ``s2m_step``: one DiT estimator call, batch 2 (cond + CFG), (2,80,1118).
- ``s2m``: infer_v2's S2M block: ``gpt_layer`` + ``vq2emb`` + length regulator to int(1.72*500) = 860 frames,
  concatenated after a 258-frame (3 s) prompt condition, ``CFM.inference`` with 25 Euler steps and CFG 0.7,
  prompt frames cut -> (1,80,860).
- ``bigvgan``: BigVGAN v2 after ``remove_weight_norm()``, (1,80,861) -> (1,1,220416).
- ``qwen_emotion``: text-to-emotion, HF ``Qwen3ForCausalLM.generate`` at Qwen3-0.6B size (QwenEmotion's model):
  32 prompt tokens, exactly 80 new tokens greedy (no eos id). Not in the shared baseline table.
- ``matmul``: not a stage of the model: float32 2048^2 matmul GFLOP/s with the same threads (machine check).

Each stage: median of ``--repeats`` (3) timed calls after one warm-up call; the 500-code generations are timed
once. GPT generation is forced to emit exactly N codes with ``min_new_tokens=N`` (the stop code is masked until
then) and ``max_generate_length=N``.

glibc malloc is told to keep freed memory: at start the script re-executes itself with ``MALLOC_MMAP_MAX_=0``
(no block is served by mmap, so large tensors come from the heap and are reused) and
``MALLOC_TRIM_THRESHOLD_=2**40`` (the heap is never given back to the system). Without that, BigVGAN and the CFM
vary by up to 40% with what ran before them. ``--no_malloc_tuning`` skips it; the table header states which.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import io
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

_MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}
_REEXEC_MARK = "INDEXTTS2_OFFICIAL_BENCH_MALLOC"

STAGES = (
    "matmul", "w2v_bert", "codec", "campplus", "spk_cond", "emo_cond", "gpt_prefill", "gpt_greedy",
    "gpt_greedy_500", "gpt_beam", "gpt_beam_500", "gpt_latent", "s2m_step", "s2m", "bigvgan", "qwen_emotion",
)
# Which model each stage needs (built once, dropped after the last stage that needs it).
_NEEDS = {
    "w2v_bert": ("w2v_bert",), "codec": ("codec",), "campplus": ("campplus",),
    "spk_cond": ("gpt",), "emo_cond": ("gpt",), "gpt_prefill": ("gpt",), "gpt_greedy": ("gpt",),
    "gpt_greedy_500": ("gpt",), "gpt_beam": ("gpt",), "gpt_beam_500": ("gpt",), "gpt_latent": ("gpt",),
    "s2m_step": ("s2mel",), "s2m": ("s2mel", "codec"), "bigvgan": ("bigvgan",), "matmul": (),
    "qwen_emotion": ("qwen",),
}

PROMPT_SECONDS = 10.0
PROMPT_MEL_FRAMES = 258  # 3 s at 22 050 Hz / 256
NUM_CODES = 500
DECODE_CODES = 100
TEXT_TOKENS = 30
CODE_TO_FRAME = 1.72
DIFFUSION_STEPS = 25
CFG_RATE = 0.7
VOCODER_FRAMES = 861
QWEN_PROMPT_TOKENS = 32  # QwenEmotion's chat prompt around a short sentence
QWEN_NEW_TOKENS = 80  # its JSON answer of eight scores
# Qwen/Qwen3-0.6B config.json (structural values; the release's qwen0.6bemo4-merge/ is a fine-tune of it).
QWEN3_CONFIG = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                    num_attention_heads=16, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6,
                    rope_theta=1_000_000.0, tie_word_embeddings=True, max_position_embeddings=40960)

# facebook/w2v-bert-2.0 config.json (structural values; configs/indextts2.py official_aux_config lists them).
W2V_BERT_CONFIG = dict(
    hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
    feature_projection_input_dim=160, hidden_act="swish", layer_norm_eps=1e-5, position_embeddings_type="relative_key",
    left_max_position_embeddings=64, right_max_position_embeddings=8, conv_depthwise_kernel_size=31,
    add_adapter=False, use_intermediate_ffn_before_adapter=False, max_source_positions=5000,
    hidden_dropout=0.0, activation_dropout=0.0, attention_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.1,
)
# w2v-bert-2.0 preprocessor_config.json.
W2V_FEATURES = dict(feature_size=80, num_mel_bins=80, sampling_rate=16000, stride=2, padding_value=1.0)
W2V_HIDDEN_INDEX = 17


def _reexec_with_malloc_env() -> None:
    if os.environ.get(_REEXEC_MARK) == "1":
        return
    env = dict(os.environ, **_MALLOC_ENV)
    env[_REEXEC_MARK] = "1"
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def malloc_state() -> str:
    """One line: heap bytes and mmapped bytes held by glibc malloc now (mallinfo2, glibc >= 2.33)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        m = libc.mallinfo2()
    except (OSError, AttributeError):
        return "mallinfo2 unavailable"
    gib = 2**30
    return f"heap {m.arena / gib:.2f} GiB (free in it {m.fordblks / gib:.2f} GiB), mmapped {m.hblkhd / 2**20:.1f} MiB"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _max_rss_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class Bench:
    """Builds the official modules lazily and runs the stages; ``rows`` collects the results."""

    def __init__(self, official_repo: Path, config_path: Path, repeats: int, warmup: int, seed: int):
        import torch
        from omegaconf import OmegaConf

        self.torch = torch
        self.repo = official_repo
        self.cfg = OmegaConf.load(config_path)
        self.repeats = repeats
        self.warmup = warmup
        self.seed = seed
        self.models: dict = {}
        self.rows: list[dict] = []
        self._gen = torch.Generator().manual_seed(seed)

    # ----------------------------------------------------------------- helpers
    def randn(self, *shape, scale: float = 1.0):
        return self.torch.randn(*shape, generator=self._gen) * scale

    def timed(self, fn, repeats: int | None = None, warmup: int | None = None):
        """(median seconds, all timed seconds, last output) of ``fn()`` after ``warmup`` calls."""
        repeats = self.repeats if repeats is None else repeats
        warmup = self.warmup if warmup is None else warmup
        out = None
        for _ in range(warmup):
            out = fn()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times), times, out

    def add(self, stage: str, io_desc: str, seconds: float, times: list[float], per_token: float | None = None,
            baseline: str = "", **extra) -> None:
        row = dict(stage=stage, io=io_desc, seconds=seconds, times=times, per_token=per_token,
                   baseline_xeon=baseline, max_rss_gib=round(_max_rss_gib(), 2), **extra)
        self.rows.append(row)
        tok = f", {per_token * 1000:.1f} ms/token" if per_token is not None else ""
        print(f"  {stage}: {seconds:.3f} s{tok}  (timed {[round(t, 3) for t in times]}, "
              f"max RSS {row['max_rss_gib']} GiB)", flush=True)

    # ----------------------------------------------------------------- models
    def build(self, name: str):
        if name in self.models:
            return self.models[name]
        torch = self.torch
        torch.manual_seed(self.seed)
        t0 = time.perf_counter()
        if name == "w2v_bert":
            from transformers import SeamlessM4TFeatureExtractor, Wav2Vec2BertConfig, Wav2Vec2BertModel

            model = Wav2Vec2BertModel(Wav2Vec2BertConfig(**W2V_BERT_CONFIG)).eval()
            extractor = SeamlessM4TFeatureExtractor(**W2V_FEATURES)
            stats_mean = self.randn(W2V_BERT_CONFIG["hidden_size"], scale=0.1)
            stats_std = torch.sqrt(self.randn(W2V_BERT_CONFIG["hidden_size"]).abs() + 0.5)
            obj = (extractor, model, stats_mean, stats_std)
        elif name == "codec":
            from indextts.codec.maskgct_codec import build_semantic_codec

            obj = build_semantic_codec(self.cfg.semantic_codec).eval()
        elif name == "campplus":
            from indextts.s2mel.modules.campplus.DTDNN import CAMPPlus

            obj = CAMPPlus(feat_dim=80, embedding_size=192).eval()
        elif name == "gpt":
            from indextts.gpt.model_v2 import UnifiedVoice

            obj = UnifiedVoice(**self.cfg.gpt, use_accel=False).eval()
            obj.post_init_gpt2_config(use_deepspeed=False, kv_cache=True, half=False)
        elif name == "s2mel":
            from indextts.s2mel.modules.commons import MyModel

            obj = MyModel(self.cfg.s2mel, use_gpt_latent=True).eval()
            obj.models["cfm"].estimator.setup_caches(max_batch_size=1, max_seq_length=8192)
        elif name == "bigvgan":
            from indextts.s2mel.modules.bigvgan import bigvgan
            from indextts.s2mel.modules.bigvgan.env import AttrDict

            h = json.loads((self.repo / "indextts/s2mel/modules/bigvgan/config.json").read_text())
            obj = bigvgan.BigVGAN(AttrDict(h), use_cuda_kernel=False)
            obj.remove_weight_norm()
            obj = obj.eval()
        elif name == "qwen":
            from transformers import Qwen3Config, Qwen3ForCausalLM

            obj = Qwen3ForCausalLM(Qwen3Config(**QWEN3_CONFIG)).eval()
            obj.generation_config.eos_token_id = None  # every run generates all its tokens
        else:
            raise ValueError(name)
        self.models[name] = obj
        params = sum(p.numel() for m in (obj if isinstance(obj, tuple) else (obj,))
                     if isinstance(m, torch.nn.Module) for p in m.parameters())
        print(f"built {name}: {params / 1e6:.1f} M params in {time.perf_counter() - t0:.1f} s", flush=True)
        return obj

    def drop(self, name: str) -> None:
        self.models.pop(name, None)
        for key in {"gpt": ("_gpt_in",), "s2mel": ("_s2m_in",)}.get(name, ()):
            self.__dict__.pop(key, None)

    # ----------------------------------------------------------------- stages
    def stage_matmul(self):
        a = self.randn(2048, 2048)
        b = self.randn(2048, 2048)
        med, times, _ = self.timed(lambda: a @ b, repeats=max(self.repeats, 5))
        best = min(times)
        self.add("matmul", "float32 2048^2 @ 2048^2", med, times, gflops=round(2 * 2048**3 / best / 1e9, 1),
                 baseline="407 GFLOP/s")

    def stage_w2v_bert(self):
        extractor, model, mean, std = self.build("w2v_bert")
        audio = self.randn(1, int(16000 * PROMPT_SECONDS), scale=0.1)

        def run():
            inputs = extractor(audio, sampling_rate=16000, return_tensors="pt")
            out = model(input_features=inputs["input_features"], attention_mask=inputs["attention_mask"],
                        output_hidden_states=True)
            return (out.hidden_states[W2V_HIDDEN_INDEX] - mean) / std

        med, times, out = self.timed(run)
        self.add("w2v_bert", f"10 s prompt -> {tuple(out.shape)}", med, times, baseline="2.61")

    def stage_codec(self):
        codec = self.build("codec")
        feat = self.randn(1, 499, 1024)
        med, times, out = self.timed(lambda: codec.quantize(feat)[0])
        self.add("codec", f"(1,499,1024) -> codes {tuple(out.shape)}", med, times, baseline="0.095")

    def stage_campplus(self):
        import torchaudio

        model = self.build("campplus")
        audio = self.randn(1, int(16000 * PROMPT_SECONDS), scale=0.1)

        def run():
            feat = torchaudio.compliance.kaldi.fbank(audio, num_mel_bins=80, dither=0, sample_frequency=16000)
            feat = feat - feat.mean(dim=0, keepdim=True)
            return model(feat.unsqueeze(0))

        med, times, out = self.timed(run)
        self.add("campplus", f"10 s prompt -> {tuple(out.shape)}", med, times, baseline="0.095")

    def _cond_emb(self):
        # A w2v-BERT feature stand-in (normalised features are ~unit scale); (1, 499, 1024) for 10 s.
        if "_cond" not in self.__dict__:
            self._cond = self.randn(1, 499, 1024)
        return self._cond

    def stage_spk_cond(self):
        gpt = self.build("gpt")
        x = self._cond_emb()
        lengths = self.torch.tensor([x.shape[-1]])  # infer_v2 passes shape[-1] (= 1024) as the length
        med, times, out = self.timed(lambda: gpt.get_conditioning(x.transpose(1, 2), lengths))
        self.add("spk_cond", f"(1,499,1024) -> {tuple(out.shape)}", med, times, baseline="0.385")

    def stage_emo_cond(self):
        gpt = self.build("gpt")
        x = self._cond_emb()
        lengths = self.torch.tensor([x.shape[-1]])
        med, times, out = self.timed(lambda: gpt.get_emovec(x, lengths))
        self.add("emo_cond", f"(1,499,1024) -> {tuple(out.shape)}", med, times, baseline="0.337")

    def _gpt_inputs(self):
        """Speaker latent, emotion vector, text ids and the prepared generate() inputs (67 positions)."""
        if "_gpt_in" in self.__dict__:
            return self._gpt_in
        torch = self.torch
        gpt = self.build("gpt")
        x = self._cond_emb()
        lengths = torch.tensor([x.shape[-1]])
        spk_latent = gpt.get_conditioning(x.transpose(1, 2), lengths)
        emovec = gpt.merge_emovec(x, x, lengths, lengths, alpha=1.0)
        # Text ids avoid 0/1 (start/stop text tokens, which prepare_gpt_inputs strips).
        text = torch.randint(2, self.cfg.gpt.number_text_tokens, (1, TEXT_TOKENS), generator=self._gen)
        speed_fast = gpt.speed_emb(torch.ones(1, dtype=torch.long))
        speed_normal = gpt.speed_emb(torch.zeros(1, dtype=torch.long))
        conds = torch.cat([spk_latent + emovec.unsqueeze(1), speed_fast.unsqueeze(1), speed_normal.unsqueeze(1)], 1)
        input_ids, inputs_embeds, attention_mask = gpt.prepare_gpt_inputs(conds, text)
        self._gpt_in = dict(x=x, lengths=lengths, spk_latent=spk_latent, emovec=emovec, text=text,
                            input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask)
        return self._gpt_in

    def stage_gpt_prefill(self):
        gpt = self.build("gpt")
        g = self._gpt_inputs()
        model = gpt.inference_model
        mask = g["attention_mask"]
        position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)

        def run():
            model.store_mel_emb(g["inputs_embeds"])
            return model(input_ids=g["input_ids"], attention_mask=mask, position_ids=position_ids, use_cache=True,
                         return_dict=True).logits

        med, times, out = self.timed(run)
        self.add("gpt_prefill", f"{tuple(g['input_ids'].shape)} positions -> logits {tuple(out.shape)}", med, times,
                 baseline="0.317")

    def _decoding_kwargs(self, beam: bool) -> dict:
        kw = dict(repetition_penalty=10.0, length_penalty=0.0)
        if beam:
            kw.update(do_sample=True, num_beams=3, top_k=30, top_p=0.8, temperature=0.8)
        else:
            kw.update(do_sample=False, num_beams=1)
        return kw

    def _decode_per_token(self, stage: str, beam: bool, baseline: str):
        from transformers import LogitsProcessor, LogitsProcessorList

        gpt = self.build("gpt")
        g = self._gpt_inputs()
        stamps: list[float] = []

        class StepClock(LogitsProcessor):
            def __call__(self, input_ids, scores):
                stamps.append(time.perf_counter())
                return scores

        trunc = g["input_ids"].shape[1]
        kwargs = self._decoding_kwargs(beam)
        per_token: list[float] = []

        def run():
            stamps.clear()
            gpt.inference_model.store_mel_emb(g["inputs_embeds"])
            out = gpt.inference_model.generate(
                g["input_ids"], bos_token_id=gpt.start_mel_token, pad_token_id=gpt.stop_mel_token,
                eos_token_id=gpt.stop_mel_token, attention_mask=g["attention_mask"], max_length=trunc + DECODE_CODES,
                min_new_tokens=DECODE_CODES, logits_processor=LogitsProcessorList([StepClock()]),
                num_return_sequences=1, **kwargs)
            codes = out[:, trunc:]
            if codes.shape[1] != DECODE_CODES or len(stamps) != DECODE_CODES:
                got = f"{codes.shape[1]} codes in {len(stamps)} steps"
                raise RuntimeError(f"{stage}: expected {DECODE_CODES} codes, got {got}")
            per_token.append((stamps[-1] - stamps[0]) / (len(stamps) - 1))
            return codes

        med, times, _ = self.timed(run)
        timed_per_token = per_token[-len(times):]
        self.add(stage, f"{DECODE_CODES} codes, batch 1{', 3 beams' if beam else ''}", med, times,
                 per_token=statistics.median(timed_per_token), per_token_runs=timed_per_token, baseline=baseline)

    def stage_gpt_greedy(self):
        self._decode_per_token("gpt_greedy", beam=False, baseline="0.0817 / token")

    def stage_gpt_beam(self):
        self._decode_per_token("gpt_beam", beam=True, baseline="0.156 / token")

    def _generate_full(self, stage: str, beam: bool, baseline: str):
        gpt = self.build("gpt")
        g = self._gpt_inputs()
        kwargs = self._decoding_kwargs(beam)

        def run(n):
            # infer_v2's gpt_gen_time: merge_emovec + inference_speech (speaker conditioning inside).
            x, lengths = g["x"], g["lengths"]
            with contextlib.redirect_stdout(io.StringIO()):
                emovec = gpt.merge_emovec(x, x, lengths, lengths, alpha=1.0)
                codes, _ = gpt.inference_speech(
                    x, g["text"], x, cond_lengths=lengths, emo_cond_lengths=lengths, emo_vec=emovec,
                    num_return_sequences=1, max_generate_length=n, min_new_tokens=n, **kwargs)
            if codes.shape[1] != n:
                raise RuntimeError(f"{stage}: expected {n} codes, got {codes.shape[1]}")
            return codes

        if self.warmup:
            run(10)  # warm-up
        med, times, out = self.timed(lambda: run(NUM_CODES), repeats=1, warmup=0)
        self.add(stage, f"text {TEXT_TOKENS} -> {out.shape[1]} codes", med, times, per_token=med / NUM_CODES,
                 baseline=baseline)

    def stage_gpt_greedy_500(self):
        self._generate_full("gpt_greedy_500", beam=False, baseline="45.5 (0.090 / token)")

    def stage_gpt_beam_500(self):
        self._generate_full("gpt_beam_500", beam=True, baseline="95.0 (0.188 / token)")

    def stage_gpt_latent(self):
        torch = self.torch
        gpt = self.build("gpt")
        g = self._gpt_inputs()
        codes = torch.randint(0, 8192, (1, NUM_CODES), generator=self._gen)
        text = g["text"]
        x, lengths = g["x"], g["lengths"]

        def run():
            return gpt(g["spk_latent"], text, torch.tensor([text.shape[-1]]), codes, torch.tensor([codes.shape[-1]]),
                       x, cond_mel_lengths=lengths, emo_cond_mel_lengths=lengths, emo_vec=g["emovec"],
                       use_speed=torch.zeros(1, dtype=torch.long))

        med, times, out = self.timed(run)
        self.add("gpt_latent", f"{NUM_CODES} codes teacher-forced -> {tuple(out.shape)}", med, times, baseline="2.05")

    def _s2m_inputs(self):
        if "_s2m_in" in self.__dict__:
            return self._s2m_in
        torch = self.torch
        s2mel = self.build("s2mel")
        # The prompt side (cached per prompt in infer_v2, not timed): LR of the prompt's quantized features.
        s_ref = self.randn(1, 150, 1024)
        prompt_cond = s2mel.models["length_regulator"](s_ref, ylens=torch.LongTensor([PROMPT_MEL_FRAMES]),
                                                       n_quantizers=3, f0=None)[0]
        self._s2m_in = dict(
            prompt_cond=prompt_cond,
            ref_mel=self.randn(1, 80, PROMPT_MEL_FRAMES, scale=2.0) - 5.0,
            style=self.randn(1, 192),
            latent=self.randn(1, NUM_CODES, 1280),
            codes=torch.randint(0, 8192, (1, NUM_CODES), generator=self._gen),
        )
        return self._s2m_in

    def stage_s2m_step(self):
        torch = self.torch
        s2mel = self.build("s2mel")
        total = PROMPT_MEL_FRAMES + int(NUM_CODES * CODE_TO_FRAME)
        x = self.randn(2, 80, total)
        prompt_x = torch.zeros(2, 80, total)
        prompt_x[0, :, :PROMPT_MEL_FRAMES] = self.randn(80, PROMPT_MEL_FRAMES)
        mu = torch.cat([self.randn(1, total, 512), torch.zeros(1, total, 512)])
        style = torch.cat([self.randn(1, 192), torch.zeros(1, 192)])
        t = torch.full((2,), 0.48)
        x_lens = torch.LongTensor([total])
        est = s2mel.models["cfm"].estimator
        med, times, out = self.timed(lambda: est(x, prompt_x, x_lens, t, style, mu))
        self.add("s2m_step", f"DiT {tuple(x.shape)} -> {tuple(out.shape)}", med, times, baseline="1.57")

    def stage_s2m(self):
        torch = self.torch
        s2mel = self.build("s2mel")
        codec = self.build("codec")
        s = self._s2m_inputs()
        code_lens = torch.LongTensor([NUM_CODES])

        def run():
            latent = s2mel.models["gpt_layer"](s["latent"])
            content = codec.quantizer.vq2emb(s["codes"].unsqueeze(1)).transpose(1, 2) + latent
            target_lengths = (code_lens * CODE_TO_FRAME).long()
            cond = s2mel.models["length_regulator"](content, ylens=target_lengths, n_quantizers=3, f0=None)[0]
            cat_cond = torch.cat([s["prompt_cond"], cond], dim=1)
            mel = s2mel.models["cfm"].inference(cat_cond, torch.LongTensor([cat_cond.size(1)]), s["ref_mel"],
                                                s["style"], None, DIFFUSION_STEPS, inference_cfg_rate=CFG_RATE)
            return mel[:, :, s["ref_mel"].size(-1):]

        med, times, out = self.timed(run)
        self.add("s2m", f"500 codes, {PROMPT_MEL_FRAMES}-frame prompt, {DIFFUSION_STEPS} steps CFG {CFG_RATE} "
                 f"-> {tuple(out.shape)}",
                 med, times, baseline="39.1")

    def stage_bigvgan(self):
        vocoder = self.build("bigvgan")
        mel = self.randn(1, 80, VOCODER_FRAMES, scale=2.0) - 5.0
        med, times, out = self.timed(lambda: vocoder(mel))
        self.add("bigvgan", f"(1,80,{VOCODER_FRAMES}) -> {tuple(out.shape)}", med, times, baseline="10.8")


    def stage_qwen_emotion(self):
        """QwenEmotion's generate (infer_v2 loads the model in float16; float32 here, as every stage; greedy, as
        its sampling costs the same per token) of 80 tokens after a 32-token prompt."""
        model = self.build("qwen")
        prompt = self.torch.randint(0, QWEN3_CONFIG["vocab_size"], (1, QWEN_PROMPT_TOKENS), generator=self._gen)

        def run():
            out = model.generate(prompt, attention_mask=self.torch.ones_like(prompt), do_sample=False,
                                 max_new_tokens=QWEN_NEW_TOKENS, min_new_tokens=QWEN_NEW_TOKENS, pad_token_id=0)
            if out.shape[1] != QWEN_PROMPT_TOKENS + QWEN_NEW_TOKENS:
                raise RuntimeError(f"qwen_emotion: expected {QWEN_NEW_TOKENS} new tokens, got {out.shape}")
            return out

        med, times, _ = self.timed(run)
        self.add("qwen_emotion", f"prompt {QWEN_PROMPT_TOKENS} -> {QWEN_NEW_TOKENS} tokens", med, times,
                 per_token=med / QWEN_NEW_TOKENS, baseline="")


def print_table(rows: list[dict], header: list[str]) -> None:
    for line in header:
        print(line)
    print()
    print("| stage | input -> output | seconds (median) | per token | official, Xeon baseline |")
    print("|---|---|---|---|---|")
    for r in rows:
        tok = f"{r['per_token']:.4f}" if r["per_token"] is not None else "–"
        sec = f"{r['seconds']:.4f}" if r["seconds"] < 1 else f"{r['seconds']:.2f}"
        if r["stage"] == "matmul":
            sec += f" ({r['gflops']} GFLOP/s)"
        print(f"| {r['stage']} | {r['io']} | {sec} | {tok} | {r['baseline_xeon']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official_repo", required=True, type=Path, help="local checkout of index-tts (read only)")
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma list from {','.join(STAGES)}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per stage (the 500-code ones: 1)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first (500-code: 10 codes)")
    parser.add_argument("--config", type=Path, default=None, help="official config.yaml (default: see docstring)")
    parser.add_argument("--json", type=Path, default=None, help="write the rows and the run's context here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt_mel_frames", type=int, default=PROMPT_MEL_FRAMES,
                        help="S2M prompt mel frames (258 = the baseline's 3 s; 861 = a whole 10 s prompt, as "
                             "infer_v2 end to end)")
    parser.add_argument("--no_malloc_tuning", action="store_true", help="leave glibc malloc at its defaults")
    args = parser.parse_args()
    globals()["PROMPT_MEL_FRAMES"] = args.prompt_mel_frames

    if not args.no_malloc_tuning:
        _reexec_with_malloc_env()
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stages {unknown}; choose from {','.join(STAGES)}")
    repo = args.official_repo.resolve()
    if not (repo / "indextts" / "gpt" / "model_v2.py").exists():
        parser.error(f"{repo} does not look like an index-tts checkout (no indextts/gpt/model_v2.py)")
    config = args.config
    if config is None:
        config = repo / "checkpoints" / "config.yaml"
        if not config.exists():
            config = Path(__file__).resolve().parents[1] / "tests" / "data" / "official_config.yaml"

    sys.path.insert(0, str(repo))
    os.environ.setdefault("TQDM_DISABLE", "1")  # the CFM's per-step progress bar
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()
    malloc_mode = "default" if args.no_malloc_tuning else ", ".join(f"{k}={v}" for k, v in _MALLOC_ENV.items())
    header = [
        f"official IndexTTS-2 on {_cpu_model()} ({os.cpu_count()} CPUs), torch {torch.__version__} "
        f"{torch.get_num_threads()} threads, transformers {transformers.__version__}, float32, random weights",
        f"official repo {repo}; config {config}; malloc {malloc_mode}; "
        f"repeats {args.repeats} after {args.warmup} warm-up",
    ]
    print(header[0], flush=True)
    bench = Bench(repo, config, args.repeats, args.warmup, args.seed)
    order = [s for s in STAGES if s in stages]
    with torch.inference_mode():
        for i, stage in enumerate(order):
            t0 = time.perf_counter()
            print(f"[{stage}]", flush=True)
            getattr(bench, f"stage_{stage}")()
            print(f"  (stage wall {time.perf_counter() - t0:.1f} s incl. build)", flush=True)
            later = {m for s in order[i + 1:] for m in _NEEDS[s]}
            for name in list(bench.models):
                if name not in later:
                    bench.drop(name)
    header.append(f"max RSS {_max_rss_gib():.2f} GiB; glibc malloc at the end: {malloc_state()}")
    print()
    print_table(bench.rows, header)
    if args.json:
        args.json.write_text(json.dumps(dict(context=header, rows=bench.rows), indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
