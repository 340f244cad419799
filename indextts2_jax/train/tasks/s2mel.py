"""The ``s2mel`` stage: S2M (length regulator + ``gpt_layer`` + DiT/WaveNet CFM) training.

Batch (s2mel pipeline, ``data_pipeline/pipeline.py``): ``semantic_features``/``semantic_lengths``
(w2v-BERT features, or the demo's stacked-mel stand-in), the aligned ``mel``/``mel_lengths`` (the
same time window; 2 mel frames per demo feature frame, 22050/256/50 per real 50 Hz frame),
``semantic_codes`` when the shards hold codes, and the style input: ``speaker_embedding`` (real
shards, CAMPPlus by ``data_pipeline.preprocess --features campplus``) or ``style_features`` /
``style_lengths`` (a ``s2mel.style_frames`` window of the ``campplus_fbank`` feature).

Step (the content built as infer_v2 builds it, spec §8.1, §12):

* codes: ``semantic_codes`` from the batch, else the frozen codec (``config.codec_checkpoint``, as in
  the GPT stage) quantizes ``semantic_features`` inside the step;
* content ``S = vq2emb(codes)`` (frozen codec), plus ``gpt_layer(latent)`` when a frozen GPT is given
  (``s2mel.gpt_checkpoint``: the GPT stage's workdir or a params msgpack). The latent is the GPT's
  teacher-forced ``final_norm`` output over ``[conds][text][start, codes]`` (spec §5.7) with the speaker
  and emotion conditioning from the batch's GPT prompt (``prompt_features``; the pipeline then emits
  text and prompt and does not crop records). Paper (S2M, GPT latent enhancement): the latent is added
  to the semantic embedding with probability 0.5, here per utterance with probability
  ``s2mel.gpt_latent_prob`` (evaluation: always). Not on the prompt frames: infer_v2's prompt content
  is the codec embedding alone. **Without a GPT checkpoint the content is the code embeddings alone**
  and ``gpt_layer`` receives no gradient (it stays at its init);
* ``mu = LR(S)``: the length regulator from each row's semantic length to its mel length (per-item
  mode, one call over prompt and target, where infer_v2 runs it on the two parts separately);
* prompt: a random prefix of each row's mel, ``floor(u * (mel_len - 1))`` frames with
  ``u ~ U(s2mel.prompt_fraction_min, s2mel.prompt_fraction_max)`` (Seed-VC style; the paper only
  says "randomly split into prompt and target");
* :func:`indextts2_jax.models.s2mel.cfm_loss`: L1 on the predicted velocity over the non-prompt
  frames, per-utterance mean, then the mean over valid rows; CFG condition dropout with probability
  ``s2mel.cond_drop_prob`` per batch (release) or per example (``s2mel.per_example_cond_drop``);
  the WaveNet dropout (``s2mel.wavenet_dropout``, p = ``model.s2mel.wavenet.p_dropout``);
* style: ``speaker_embedding`` from the batch, or the demo CAMPPlus on ``style_features``. The demo
  has no pretrained CAMPPlus: :func:`demo_campplus_params` is a frozen random-init CAMPPlus
  (``config.aux.campplus``) from a fixed seed (:data:`DEMO_CAMPPLUS_SEED`, independent of
  ``config.seed``), i.e. a fixed random projection of fbank statistics, rebuilt identically at
  inference. It is applied per row at its own length (:func:`data_pipeline.model_features.masked_campplus`).

Metrics: ``cfm_loss`` (= loss), ``cond_dropped`` (fraction of valid rows whose condition was
dropped), ``gpt_latent_used`` (fraction of valid rows with the GPT latent; 0 without a GPT),
``prompt_fraction`` (mean prompt share of the mel frames), ``mel_frames``.
Samples (eval, process 0, single-process runs): a short Euler sampling (``s2mel.sample_steps``) of
the first eval example, written as a mel image (ground truth on top, prediction below).

Params: ``{"length_regulator", "gpt_layer", "estimator"}``, the layout of
:func:`indextts2_jax.models.s2mel.from_torch`, so an exported tree is used as is. Sizes from
:func:`s2mel_config_from` (``gpt_layer`` maps the GPT width to the length regulator's input width;
official: 1280 -> 1024). ``init_from``: an Orbax checkpoint with the tree at the top, under
``"s2mel"`` or ``"params"``; :func:`prepare_init_from` turns a converted official checkpoint into one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from indextts2_jax.errors import ConfigError
from indextts2_jax.models import s2mel as s2m
from indextts2_jax.nn.layers import check_attention
from indextts2_jax.train.tasks import PipelineTask, converted_component_file, no_mesh, write_init_checkpoint
from indextts2_jax.train.tasks.codec import codec_config_from, compute_dtype, load_params

log = logging.getLogger("indextts2_jax.train")

DEMO_CAMPPLUS_SEED = 20250  # fixed: the demo CAMPPlus must be the same in training and at inference
S2MEL_PARAMS_FILE = "s2mel_params.msgpack"


def s2mel_config_from(config) -> s2m.S2MelConfig:
    """S2M config from ``config.model.s2mel`` (official keys); ``gpt_layer`` sized from the GPT width
    (``model.gpt.model_dim``) to the length regulator's input width (official: 1280 -> 256 -> 128 -> 1024)."""
    raw = config.model.s2mel
    cfg = s2m.S2MelConfig.from_official(raw.to_dict() if hasattr(raw, "to_dict") else dict(raw))
    dims = tuple(cfg.gpt_layer_dims[:-1]) + (cfg.length_regulator.in_channels,)
    return dataclasses.replace(cfg, gpt_latent_dim=int(config.model.gpt["model_dim"]), gpt_layer_dims=dims)


def campplus_config_from(config):
    from indextts2_jax.models.campplus import CAMPPlusConfig

    raw = config.aux.campplus
    return CAMPPlusConfig.from_official(raw.to_dict() if hasattr(raw, "to_dict") else dict(raw))


def demo_campplus_params(config) -> dict:
    """The demo's frozen CAMPPlus: ``{"params", "batch_stats"}`` for ``config.aux.campplus``, random, fixed.

    Pure: the same ``config.aux.campplus`` gives the same arrays (NumPy generator seeded with
    :data:`DEMO_CAMPPLUS_SEED` and each leaf's position, not ``config.seed``), so inference rebuilds the
    style encoder the S2M was trained with. Kernels are He-normal (std sqrt(2 / fan_in), fan_in = all
    but the last axis), BatchNorm scale 1 / bias 0, running mean 0 / variance 1. Drawn in NumPy from the
    abstract shapes (no compiled init: the 52-layer CAMPPlus init compiles for a minute on a busy CPU).
    """
    from indextts2_jax.models.campplus import abstract_variables

    shapes = abstract_variables(campplus_config_from(config))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes)
    out = []
    for i, (path, leaf) in enumerate(leaves):
        names = [str(getattr(k, "key", k)) for k in path]
        name = names[-1]
        if name in ("mean", "bias"):
            value = np.zeros(leaf.shape, np.float32)
        elif name in ("var", "scale"):
            value = np.ones(leaf.shape, np.float32)
        else:
            fan_in = int(np.prod(leaf.shape[:-1])) or 1
            rng = np.random.default_rng([DEMO_CAMPPLUS_SEED, i])
            value = (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        out.append(value)
    return jax.tree_util.tree_unflatten(treedef, out)


def load_gpt_params(path: str | os.PathLike) -> Any:
    """UnifiedVoice params from a GPT-stage workdir (latest checkpoint) or a params msgpack."""
    from indextts2_jax.train.tasks.codec import latest_params

    p = Path(path)
    if p.is_dir() and (p / "checkpoints").is_dir():
        _, params = latest_params(p)
    elif p.is_file():
        params = load_params(p)
    else:
        raise FileNotFoundError(f"s2mel.gpt_checkpoint={str(path)!r}: neither a GPT-stage workdir (with "
                                "checkpoints/) nor a params file")
    for key in ("params", "gpt"):
        if isinstance(params, Mapping) and key in params and "mel_head" not in params:
            params = params[key]
    if not (isinstance(params, Mapping) and "mel_head" in params):
        raise ConfigError(f"s2mel.gpt_checkpoint={str(path)!r} holds no UnifiedVoice params")
    return {k: v for k, v in params.items() if k != "speaker_classifier"}


class S2melTask(PipelineTask):
    name = "s2mel"

    def __init__(self, config):
        s = config.s2mel
        attention = str(s.get("attention", "einsum"))
        try:  # before the data checks: a typo fails first
            check_attention(attention, compute_dtype(config))
        except ValueError as e:
            raise ConfigError(f"s2mel.{e}") from None
        super().__init__(config)
        cfg = s2mel_config_from(config)
        self.model_config = dataclasses.replace(cfg, dit=dataclasses.replace(cfg.dit, attention=attention))
        self.dtype = compute_dtype(config)
        lo, hi = float(s.prompt_fraction_min), float(s.prompt_fraction_max)
        if not 0.0 <= lo <= hi <= 1.0:
            raise ConfigError(f"s2mel.prompt_fraction_min/max = {lo}/{hi}: expected 0 <= min <= max <= 1")
        if not config.get("codec_checkpoint"):
            raise ConfigError("the s2mel stage embeds codes with the frozen semantic codec: set "
                              "config.codec_checkpoint (the codec stage's exported params, or the converted official "
                              "codec params)")
        from indextts2_jax.models.semantic_codec import SemanticCodec

        path = str(config.codec_checkpoint)
        if not os.path.exists(path):
            raise FileNotFoundError(f"codec_checkpoint={path!r} does not exist")
        self._codec = SemanticCodec(codec_config_from(config))
        self._codec_params = jax.tree.map(jnp.asarray, load_params(path))
        if self._codec.config.hidden_size != self.model_config.length_regulator.in_channels:
            raise ConfigError(f"codec hidden_size {self._codec.config.hidden_size} != s2mel length_regulator "
                              f"in_channels {self.model_config.length_regulator.in_channels}")
        # the frozen GPT (latent)
        self._gpt = None
        self._gpt_params = None
        if s.get("gpt_checkpoint"):
            from indextts2_jax.models.gpt import UnifiedVoice
            from indextts2_jax.train.tasks.gpt import model_config_from

            self._gpt_config = model_config_from(config)
            self._gpt = UnifiedVoice(self._gpt_config, dtype=self.dtype)
            self._gpt_params = jax.tree.map(jnp.asarray, load_gpt_params(str(s.gpt_checkpoint)))
            top = max(int(b) for b in config.data.length_buckets)
            if top + 2 > self._gpt_config.mel_positions:
                raise ConfigError(f"s2mel with a GPT latent: the largest length bucket ({top} codes) exceeds the GPT's "
                                  f"mel positions ({self._gpt_config.mel_positions - 2} codes); lower "
                                  "data.length_buckets")
        # the style source
        outputs = set(self.dataset_meta().get("outputs", {}))
        self.style_source = "speaker_embedding" if "speaker_embedding" in outputs else (
            "campplus_fbank" if "campplus_fbank" in outputs else "")
        if not self.style_source:
            raise ConfigError(f"the shards in {self.shards} hold no style input: preprocess with --features "
                              "campplus (CAMPPlus embeddings, with --model) or campplus_fbank (demo CAMPPlus)")
        self._campplus = None
        if self.style_source == "campplus_fbank":
            from indextts2_jax.models.campplus import CAMPPlus

            ccfg = campplus_config_from(config)
            if ccfg.embedding_size != self.model_config.style_dim:
                raise ConfigError(f"aux.campplus.embedding_size {ccfg.embedding_size} != s2mel style dim "
                                  f"{self.model_config.style_dim}")
            self._campplus = CAMPPlus(ccfg)
            self._campplus_vars = jax.tree.map(jnp.asarray, demo_campplus_params(config))
        self._sample_batch = None
        self._sample_fn = None
        self._vocoder = None

    def memory_hints(self) -> str:
        return "s2mel.attention='cudnn' (NVIDIA GPUs, bfloat16: no T x T attention buffers in the DiT)"

    # -- data -----------------------------------------------------------------------------------
    @property
    def pipeline_stage(self) -> str:
        return "s2mel_gpt" if self._gpt is not None else "s2mel"

    def pipeline(self, split: str = "train", process_index: int = 0, process_count: int = 1, **kw):
        from data_pipeline.pipeline import make_pipeline

        return make_pipeline(self.config, split, shards_dir=self.shards, stage=self.pipeline_stage,
                             process_index=process_index, process_count=process_count, **kw)

    def tokens_in_batch(self, batch) -> int:
        """Mel frames (the DiT's sequence)."""
        return int(np.sum(batch["mel_lengths"]))

    def flops_per_step(self, batch, num_params: int) -> float:
        """~6 * params * padded mel frames + DiT attention (12 * depth * dim * T^2 per row, fwd+bwd).

        Approximate: the length regulator and the frozen codec/CAMPPlus/GPT forwards are not counted
        separately (the length regulator's params run over mel frames too)."""
        b, t = batch["mel"].shape[:2]
        d = self.model_config.dit
        return 6.0 * num_params * b * t + 12.0 * d.depth * d.hidden_dim * t * t * b

    # -- params ---------------------------------------------------------------------------------
    def init_params(self, rng, batch):
        with no_mesh():
            return s2m._init_params(self.model_config, rng, unbox=False)

    def select_init_params(self, restored: Any) -> Any:
        """The S2M tree from a restored checkpoint: at the top, under ``s2mel`` or under ``params``."""
        tree = restored
        for key in ("params", "s2mel"):
            if isinstance(tree, Mapping) and key in tree and "estimator" not in tree:
                tree = tree[key]
        if not (isinstance(tree, Mapping) and {"length_regulator", "gpt_layer", "estimator"} <= set(tree)):
            raise ConfigError("init_from: no S2M params found (expected length_regulator/gpt_layer/estimator at the "
                              f"top, under 's2mel' or under 'params'; top-level keys: {sorted(restored)[:10]})")
        return {k: tree[k] for k in ("length_regulator", "gpt_layer", "estimator")}

    # -- the step -------------------------------------------------------------------------------
    def codes(self, batch, sem_mask):
        if "semantic_codes" in batch:
            return batch["semantic_codes"].astype(jnp.int32)
        from indextts2_jax.models.semantic_codec import SemanticCodec

        codes, _ = self._codec.apply({"params": self._codec_params}, batch["semantic_features"].astype(jnp.float32),
                                     sem_mask, method=SemanticCodec.quantize)
        return jax.lax.stop_gradient(codes)

    def style(self, batch, valid):
        if self.style_source == "speaker_embedding":
            return batch["speaker_embedding"].astype(jnp.float32)
        from data_pipeline.model_features import masked_campplus

        feats = batch["style_features"].astype(jnp.float32)
        full = feats.shape[1]
        lengths = jnp.where(valid, jnp.clip(batch["style_lengths"], 2, full), full)
        from indextts2_jax.train.tasks.gpt import _batch_unconstrained

        with _batch_unconstrained():
            emb = masked_campplus(self._campplus, self._campplus_vars, feats, lengths)
        return jax.lax.stop_gradient(emb.astype(jnp.float32))

    def gpt_latent(self, batch, codes, code_lengths, valid):
        """Teacher-forced GPT latent (B, L, D) over the row's codes (frozen, no gradient)."""
        from indextts2_jax.models.gpt import UnifiedVoice
        from indextts2_jax.train.tasks.gpt import _batch_unconstrained

        g = self.config.gpt
        p_len = jnp.where(valid, batch["prompt_lengths"], batch["prompt_features"].shape[1])
        spk = (batch["prompt_features"].astype(self.dtype), p_len)
        if str(g.emotion_source) == "target":
            feats = batch["semantic_features"]
            emo = (feats.astype(self.dtype), jnp.where(valid, code_lengths, feats.shape[1]))
        else:
            emo = spk
        with _batch_unconstrained():  # the GPT stage's workaround for the 1-latent emotion perceiver
            emovec = self._gpt.apply({"params": self._gpt_params}, *emo, method=UnifiedVoice.emovec)
        target_tokens = jnp.zeros_like(code_lengths) if self._gpt_config.duration_control else None  # free length
        text_lengths = jnp.where(valid, batch["text_lengths"], 0)
        out = self._gpt.apply({"params": self._gpt_params}, spk[0], spk[1], emo[0], emo[1], batch["text_ids"],
                              text_lengths, codes, code_lengths, emovec=emovec, target_tokens=target_tokens,
                              return_logits=False)
        return jax.lax.stop_gradient(out["latent"].astype(jnp.float32))

    def prepare(self, params, batch, rng, train: bool):
        """Everything before the CFM: (mel, mu, style, prompt_lens, mel_lens, valid, metrics).

        mel (B, T, 80), mu (B, T, content_dim), style (B, style_dim), prompt_lens/mel_lens (B,), valid (B,).
        Padding rows get full lengths (finite values) and are excluded from the loss by ``valid``.
        """
        s = self.config.s2mel
        cfg = self.model_config
        k_prompt, k_latent = jax.random.split(rng)
        valid = batch["valid"].astype(bool)
        feats = batch["semantic_features"]
        mel = batch["mel"].astype(jnp.float32)
        b, l_sem = feats.shape[:2]
        t_mel = mel.shape[1]
        sem_len = jnp.where(valid, jnp.clip(batch["semantic_lengths"], 1, l_sem), l_sem)
        mel_len = jnp.where(valid, jnp.clip(batch["mel_lengths"], 1, t_mel), t_mel)
        sem_mask = jnp.arange(l_sem)[None, :] < jnp.where(valid, batch["semantic_lengths"], 0)[:, None]
        codes = self.codes(batch, sem_mask)
        from indextts2_jax.models.semantic_codec import SemanticCodec

        content = self._codec.apply({"params": self._codec_params}, codes, method=SemanticCodec.vq2emb)
        content = jax.lax.stop_gradient(content.astype(jnp.float32))
        # the prompt: a random prefix of each row's mel (and the semantic frames it covers)
        u = jax.random.uniform(k_prompt, (b,), jnp.float32, float(s.prompt_fraction_min),
                               float(s.prompt_fraction_max))
        prompt_lens = jnp.clip(jnp.floor(u * (mel_len - 1).astype(jnp.float32)).astype(jnp.int32), 0, mel_len - 1)
        prompt_sem = (prompt_lens * sem_len) // mel_len
        used = jnp.zeros((b,), bool)
        if self._gpt is not None:
            latent = self.gpt_latent(batch, codes, sem_len, valid)
            gpt_out = s2m.GptLayer(cfg.gpt_layer_dims, dtype=self.dtype).apply(
                {"params": params["gpt_layer"]}, latent).astype(jnp.float32)
            used = jax.random.bernoulli(k_latent, float(s.gpt_latent_prob), (b,)) if train else jnp.ones((b,), bool)
            target_frames = jnp.arange(l_sem)[None, :] >= prompt_sem[:, None]
            content = content + jnp.where((used[:, None] & target_frames)[:, :, None], gpt_out, 0.0)
        mu = s2m.InterpolateRegulator(cfg.length_regulator, dtype=self.dtype).apply(
            {"params": params["length_regulator"]}, content, mel_len, t_mel, sem_len)
        style = self.style(batch, valid)
        vf = valid.astype(jnp.float32)
        n_valid = jnp.maximum(vf.sum(), 1.0)
        metrics = {"gpt_latent_used": jnp.sum(used * vf) / n_valid,
                   "prompt_fraction": jnp.sum(prompt_lens / mel_len * vf) / n_valid,
                   "mel_frames": jnp.sum(jnp.where(valid, batch["mel_lengths"], 0)).astype(jnp.float32)}
        return mel, mu, style, prompt_lens, mel_len, valid, metrics

    def loss_fn(self, params, batch, rng, train: bool = True):
        s = self.config.s2mel
        k_prep, k_cfm = jax.random.split(rng)
        mel, mu, style, prompt_lens, mel_len, valid, metrics = self.prepare(params, batch, k_prep, train)
        _, aux = s2m.cfm_loss(params["estimator"], self.model_config, mel, mu, style, prompt_lens, mel_len, k_cfm,
                              cond_drop_prob=float(s.cond_drop_prob) if train else 0.0,
                              per_example_drop=bool(s.per_example_cond_drop),
                              wavenet_dropout=bool(s.wavenet_dropout) and train, dtype=self.dtype)
        vf = valid.astype(jnp.float32)
        n_valid = jnp.maximum(vf.sum(), 1.0)
        loss = jnp.sum(aux["per_utterance"] * vf) / n_valid
        metrics = dict(metrics, cfm_loss=loss, cond_dropped=jnp.sum(aux["cond_dropped"] * vf) / n_valid)
        return loss, metrics

    # -- samples --------------------------------------------------------------------------------
    def _first_eval_batch(self):
        if self._sample_batch is None:
            try:
                p = self.pipeline("valid", 0, 1, num_epochs=1, shuffle=False, num_workers=0)
            except (FileNotFoundError, ValueError):
                p = self.pipeline("train", 0, 1, num_epochs=1, shuffle=False, num_workers=0)
            batch = p.assemble(p.plan[0])
            row = int(np.argmax(batch["valid"]))
            self._sample_batch = {k: v[row:row + 1] for k, v in batch.items()}
        return self._sample_batch

    def sample_mel(self, params, step: int) -> tuple[np.ndarray, np.ndarray, int]:
        """(ground truth (T, 80), prediction (T, 80), prompt frames) for the first eval example.

        A short Euler sampling (``s2mel.sample_steps``, CFG ``s2mel.sample_cfg_rate``) with the first third
        of the true mel as prompt, noise from ``fold_in(key(seed), step)``. Prompt frames of the prediction
        are the prompt itself.
        """
        s = self.config.s2mel
        batch = self._first_eval_batch()
        n = int(batch["mel_lengths"][0])
        prompt = max(1, n // 3)
        if self._sample_fn is None:
            def fn(p, b, key):
                mel, mu, style, _, _, _, _ = self.prepare(p, b, jax.random.key(0), False)
                return mel, mu, style

            self._sample_fn = jax.jit(fn)
        with no_mesh():
            host = jax.tree.map(np.asarray, jax.device_get(params))
            mel, mu, style = self._sample_fn(host, {k: jnp.asarray(v) for k, v in batch.items()}, None)
            key = jax.random.fold_in(jax.random.key(int(self.config.seed)), step)
            pred = s2m.cfm_inference(host["estimator"], self.model_config, mu[:, :n], jnp.array([n]),
                                     mel[:, :prompt], style, n_steps=int(s.sample_steps),
                                     cfg_rate=float(s.sample_cfg_rate), key=key, dtype=self.dtype)
        gt = np.asarray(mel[0, :n])
        out = np.asarray(pred[0, :n]).copy()
        out[:prompt] = gt[:prompt]
        return gt, out, prompt

    def write_samples(self, params, writer, step: int) -> None:
        if writer is None or jax.process_count() > 1:  # the sample needs every param on this host
            return
        gt, pred, _ = self.sample_mel(params, step)
        writer.add_image("s2mel/mel_true_top_pred_bottom", mel_image(gt, pred), step, dataformats="CHW")
        l1 = float(np.mean(np.abs(gt - pred)))
        writer.add_scalar("eval/sample_mel_l1", l1, step)
        if self.config.s2mel.get("vocoder_checkpoint"):
            sr = int(self.config.aux.bigvgan.sampling_rate)
            for tag, mel in (("s2mel/audio_pred", pred), ("s2mel/audio_true_mel", gt)):
                writer.add_audio(tag, self.vocode(mel), step, sample_rate=sr)

    def vocode(self, mel: np.ndarray) -> np.ndarray:
        """(T, n_mels) log-mel -> (T * hop,) float32 waveform with ``s2mel.vocoder_checkpoint``'s BigVGAN."""
        if self._vocoder is None:
            from indextts2_jax.models.bigvgan import BigVGAN
            from indextts2_jax.train.tasks.vocoder import generator_config_from, load_generator_params

            gen = BigVGAN(generator_config_from(self.config))
            params = jax.tree.map(jnp.asarray, load_generator_params(str(self.config.s2mel.vocoder_checkpoint)))
            fn = jax.jit(lambda p, m: gen.apply({"params": p}, m))
            self._vocoder = lambda m: fn(params, m)
        with no_mesh():
            return np.asarray(self._vocoder(jnp.asarray(mel, jnp.float32)[None]), np.float32)[0]


def mel_image(*mels: np.ndarray) -> np.ndarray:
    """Mels (T, n_mels) stacked vertically (low bins at the bottom of each), one common [0, 1] scale,
    a 2-pixel white line between them: (1, H, T) float32 for ``add_image(..., dataformats="CHW")``."""
    lo = min(float(np.min(m)) for m in mels)
    hi = max(float(np.max(m)) for m in mels)
    rows = []
    for i, m in enumerate(mels):
        if i:
            rows.append(np.ones((2, m.shape[0]), np.float32))
        rows.append(((np.asarray(m, np.float32).T[::-1] - lo) / max(hi - lo, 1e-6)).astype(np.float32))
    return np.concatenate(rows, axis=0)[None]


# -- export / init_from -----------------------------------------------------------------------------
def export_s2mel_params(workdir: str | os.PathLike, out_path: str | os.PathLike | None = None) -> Path:
    """The latest s2mel checkpoint of ``workdir`` -> ``<workdir>/s2mel_params.msgpack`` (or ``out_path``):
    the ``{"length_regulator", "gpt_layer", "estimator"}`` tree of ``models/s2mel.py``."""
    from indextts2_jax.train.tasks.codec import latest_params, save_params

    _, params = latest_params(workdir)
    return save_params(params, out_path or Path(workdir) / S2MEL_PARAMS_FILE)


def prepare_init_from(path: str | os.PathLike, workdir: str | os.PathLike) -> str:
    """An Orbax checkpoint path for ``config.init_from``.

    A converted checkpoint folder (``converted.json`` + ``params/s2mel.msgpack``, written by
    ``indextts2_jax.convert.official.save_converted``) is rewritten once as an Orbax checkpoint
    ``<workdir>/init_from_s2mel`` holding ``{"s2mel": params}``; any other path is returned as is.
    """
    file = converted_component_file(path, "s2mel")
    if file is None:
        return str(path)
    return write_init_checkpoint(Path(workdir) / "init_from_s2mel", "s2mel", lambda: load_params(file))


__all__ = ["S2melTask", "demo_campplus_params", "s2mel_config_from", "campplus_config_from", "load_gpt_params",
           "export_s2mel_params", "prepare_init_from", "mel_image", "DEMO_CAMPPLUS_SEED", "S2MEL_PARAMS_FILE"]
