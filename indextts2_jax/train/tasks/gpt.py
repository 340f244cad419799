"""The ``gpt`` stage: UnifiedVoice (T2S) training, the paper's three T2S stages.

Batch (GPT pipeline): ``text_ids``/``text_lengths``, ``semantic_features``/``semantic_lengths``,
``prompt_features``/``prompt_lengths`` (another utterance of the speaker, or the same one:
``data.prompt_source``), optionally ``semantic_codes``, and ``valid``/``speaker_index``.

Step:

* target codes: ``semantic_codes`` from the batch when the shards hold them, else the frozen codec
  (params from ``config.codec_checkpoint``, see ``tasks/codec.py``) quantizes ``semantic_features``
  inside the step (no gradient);
* speaker conditioning from ``prompt_features``; emotion conditioning from the same prompt
  (``gpt.emotion_source="prompt"``) or from the target utterance itself (``"target"``);
* loss: ``text_weight * text CE + mel_weight * mel CE`` (:func:`indextts2_jax.models.gpt.t2s_loss`
  conventions), over valid rows only;
* duration control (``gpt.duration_control``): ``target_tokens`` = the true code count, zeroed with
  probability ``gpt.duration_drop_prob`` (0.3, paper) per example from the step key;
* stage 2 (``gpt_stage=2``): a speaker classifier (Dense-ReLU-Dense over ``speaker_index``) on the
  emotion vector behind a gradient-reversal layer (scale ``gpt.grl_scale``), loss weight
  ``gpt.adversarial_weight`` (alpha of the paper's Eq. 1); the speaker conditioner is frozen;
* stage 3: every conditioner frozen (speaker and emotion paths), the GPT body trains.

``config.freeze`` gets the stage's regexes (:func:`stage_freeze`) when the task is built.

Params: the UnifiedVoice tree, plus ``speaker_classifier`` in stage 2. ``init_from``: an Orbax
checkpoint whose tree holds UnifiedVoice params at the top, under ``"gpt"`` or under
``"params"`` (a training state); :func:`prepare_init_from` turns a converted official checkpoint
(``indextts2_jax.convert.official.save_converted``: ``converted.json`` + ``params/gpt.msgpack``)
into such a checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from indextts2_jax.errors import ConfigError
from indextts2_jax.models.gpt import EMO_DIM, UnifiedVoice, UnifiedVoiceConfig, masked_cross_entropy, target_mask
from indextts2_jax.nn.gpt2 import check_training_options
from indextts2_jax.train.tasks import PipelineTask, converted_component_file, no_mesh, write_init_checkpoint
from indextts2_jax.train.tasks.codec import codec_config_from, compute_dtype, load_params

log = logging.getLogger("indextts2_jax.train")

SPEAKER_CONDITIONER = (r"^conditioning_encoder/", r"^perceiver_encoder/")
EMOTION_CONDITIONER = (r"^emo_conditioning_encoder/", r"^emo_perceiver_encoder/", r"^emovec_layer/",
                       r"^emo_layer/")


def stage_freeze(gpt_stage: int) -> tuple[str, ...]:
    """Freeze regexes of the paper's T2S stages: 1 none, 2 the speaker conditioner, 3 all conditioners."""
    if gpt_stage == 1:
        return ()
    if gpt_stage == 2:
        return SPEAKER_CONDITIONER
    if gpt_stage == 3:
        return SPEAKER_CONDITIONER + EMOTION_CONDITIONER
    raise ConfigError(f"gpt_stage={gpt_stage}: expected 1, 2 or 3")


def model_config_from(config) -> UnifiedVoiceConfig:
    """UnifiedVoice config from ``config.model.gpt`` (official keys) and ``config.gpt`` (our options)."""
    cfg = UnifiedVoiceConfig.from_official(dict(config.model.gpt))
    return dataclasses.replace(cfg, condition_input_size=int(config.gpt.condition_input_size),
                               emotion_dim=int(config.gpt.get("emotion_dim", EMO_DIM)),
                               duration_control=bool(config.gpt.duration_control))


@jax.custom_vjp
def gradient_reversal(x, scale):
    """Identity forward; the gradient is multiplied by ``-scale`` (Ganin & Lempitsky)."""
    return x


def _grl_fwd(x, scale):
    return x, scale


def _grl_bwd(scale, g):
    return (-scale * g, jnp.zeros_like(scale))


gradient_reversal.defvjp(_grl_fwd, _grl_bwd)


class SpeakerClassifier(nn.Module):
    """Dense(hidden) -> ReLU -> Dense(num_speakers): (B, D) -> (B, S) logits (float32)."""

    hidden: int
    num_speakers: int

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(self.hidden, name="hidden")(x.astype(jnp.float32)))
        return nn.Dense(self.num_speakers, name="out")(h)


def _batch_unconstrained():
    """Logical-axis rules without ``"batch"`` (its activation constraints then replicate the batch).

    Workaround for a miscompile seen with jax 0.10.2 on CPU: ``PerceiverResampler`` with few latents
    (the emotion perceiver has 1) under a (data=2, fsdp=2, tensor=2) mesh returns wrong values for
    the batch rows on the (data 0, fsdp 1) and (data 1, fsdp 0) shards when its latents carry the
    ``("batch", "length", "embed")`` constraint; the 32-latent speaker perceiver is unaffected.
    The emotion path is small (one latent per row), so replicating its activations costs little.
    """
    rules = tuple(r for r in nn.get_logical_axis_rules() if r[0] != "batch")
    return nn.logical_axis_rules(rules)


def dedupe_axis_names(tree):
    """Boxed params whose logical names repeat a name (the conformer's 2-D conv kernels are
    ``("kernel", "kernel", ...)``) keep the first occurrence only; flax refuses repeated names."""

    def fix(x):
        if isinstance(x, nn.Partitioned):
            seen, names = set(), []
            for n in x.names:
                names.append(None if (n is not None and n in seen) else n)
                if n is not None:
                    seen.add(n)
            return x.replace(names=tuple(names))
        return x

    return jax.tree.map(fix, tree, is_leaf=lambda x: isinstance(x, nn.Partitioned))


class GptTask(PipelineTask):
    name = "gpt"

    def __init__(self, config):
        g = config.gpt
        attention, remat = str(g.get("attention", "einsum")), str(g.get("remat", "none"))
        try:  # before the data checks: a typo fails first
            check_training_options(attention, remat, compute_dtype(config))
        except ValueError as e:
            raise ConfigError(f"gpt.{e}") from None
        super().__init__(config)
        self.stage = int(config.get("gpt_stage", 1))
        wanted = stage_freeze(self.stage)
        have = tuple(config.freeze)
        missing = tuple(r for r in wanted if r not in have)
        if missing:  # the trainer builds the optimizer from config.freeze after the task exists
            config.freeze = have + missing  # an existing key: allowed in a locked config
            log.info("gpt_stage=%d: freezing %s", self.stage, missing)
        self.model_config = model_config_from(config)
        self.dtype = compute_dtype(config)
        self.model = UnifiedVoice(self.model_config, dtype=self.dtype, attention=attention, remat=remat)
        if str(g.emotion_source) not in ("prompt", "target"):
            raise ConfigError(f"gpt.emotion_source={g.emotion_source!r}: expected 'prompt' or 'target'")
        self.adversarial = self.stage == 2 and float(g.adversarial_weight) > 0
        num_speakers = int(g.num_speakers) or len(self.dataset_meta().get("speakers", []))
        if self.adversarial and num_speakers < 2:
            raise ConfigError("gpt_stage=2 trains a speaker classifier: set gpt.num_speakers (the shards' "
                              f"dataset.json lists {num_speakers} speakers)")
        self.classifier = SpeakerClassifier(int(g.classifier_hidden), max(num_speakers, 2))
        self._codec = None
        self._codec_params = None
        if config.get("codec_checkpoint"):
            from indextts2_jax.models.semantic_codec import SemanticCodec

            path = str(config.codec_checkpoint)
            if not os.path.exists(path):
                raise FileNotFoundError(f"codec_checkpoint={path!r} does not exist (export it with "
                                        "indextts2_jax.train.tasks.codec.export_codec_params)")
            self._codec = SemanticCodec(codec_config_from(config))
            self._codec_params = jax.tree.map(jnp.asarray, load_params(path))
        self._non_embedding = None

    # -- params ---------------------------------------------------------------------------------
    def memory_hints(self) -> str:
        return ("gpt.remat='dots' or 'full' (recompute each block's activations in the backward), "
                "gpt.attention='cudnn' (NVIDIA GPUs, bfloat16: no S x S attention buffers)")

    def _model_inputs(self, batch):
        f = batch["prompt_features"]
        return (f, batch["prompt_lengths"], f, batch["prompt_lengths"], batch["text_ids"], batch["text_lengths"],
                jnp.zeros(batch["semantic_features"].shape[:2], jnp.int32),
                batch["semantic_lengths"])

    def init_params(self, rng, batch):
        model_rng, cls_rng = jax.random.split(rng)
        # The conformer's 2-D conv kernels carry the logical names ("kernel", "kernel", ...), which flax
        # refuses to turn into a sharding constraint under a mesh; init them mesh-free (the trainer
        # places the result by the shardings derived from the de-duplicated names).
        with no_mesh():
            params = dedupe_axis_names(self.model.init(model_rng, *self._model_inputs(batch))["params"])
        if self.adversarial:
            params = dict(params)
            params["speaker_classifier"] = self.classifier.init(
                cls_rng, jnp.zeros((1, self.model_config.model_dim)))["params"]
        return params

    def select_init_params(self, restored: Any) -> Any:
        """UnifiedVoice params from a restored tree (top level, ``gpt`` or ``params``), plus a fresh classifier."""
        tree = restored
        for key in ("params", "gpt"):
            if isinstance(tree, Mapping) and key in tree and "mel_head" not in tree:
                tree = tree[key]
        if not (isinstance(tree, Mapping) and "mel_head" in tree):
            raise ConfigError("init_from: no UnifiedVoice params found (expected 'mel_head' at the top, under "
                              f"'gpt' or under 'params'; top-level keys: {sorted(restored)[:10]})")
        params = {k: v for k, v in tree.items() if k != "speaker_classifier"}
        if self.adversarial:
            cls = tree.get("speaker_classifier")
            if cls is None:
                rng = jax.random.fold_in(jax.random.key(int(self.config.seed)), 7)
                cls = jax.tree.map(np.asarray, self.classifier.init(
                    rng, jnp.zeros((1, self.model_config.model_dim)))["params"])
            params["speaker_classifier"] = cls
        return params

    # -- loss -----------------------------------------------------------------------------------
    def target_codes(self, batch, mask):
        if "semantic_codes" in batch:
            return batch["semantic_codes"].astype(jnp.int32)
        if self._codec is None:
            raise ConfigError("the shards hold no semantic_codes: set config.codec_checkpoint (the codec stage's "
                              "exported params) so the step quantizes semantic_features")
        from indextts2_jax.models.semantic_codec import SemanticCodec

        codes, _ = self._codec.apply({"params": self._codec_params}, batch["semantic_features"].astype(jnp.float32),
                                     mask, method=SemanticCodec.quantize)
        return jax.lax.stop_gradient(codes)

    def loss_fn(self, params, batch, rng, train: bool = True):
        g = self.config.gpt
        valid = batch["valid"].astype(bool)
        feats = batch["semantic_features"]
        lengths = jnp.where(valid, batch["semantic_lengths"], 0)
        mask = jnp.arange(feats.shape[1])[None, :] < lengths[:, None]
        codes = self.target_codes(batch, mask)
        # padding rows: give the conditioners a full (zero) prompt so nothing divides by zero
        p_len = jnp.where(valid, batch["prompt_lengths"], batch["prompt_features"].shape[1])
        spk = (batch["prompt_features"].astype(self.dtype), p_len)
        if str(g.emotion_source) == "target":
            emo = (feats.astype(self.dtype), jnp.where(valid, lengths, feats.shape[1]))
        else:
            emo = spk
        model_params = {k: v for k, v in params.items() if k != "speaker_classifier"}
        with _batch_unconstrained():  # workaround, see _batch_unconstrained
            emovec = self.model.apply({"params": model_params}, *emo, method=UnifiedVoice.emovec)
        target_tokens = None
        if self.model_config.duration_control:
            drop = jax.random.bernoulli(rng, float(g.duration_drop_prob), lengths.shape) if train else \
                jnp.zeros(lengths.shape, bool)
            target_tokens = jnp.where(drop, 0, lengths)
        text_lengths = jnp.where(valid, batch["text_lengths"], 0)
        out = self.model.apply({"params": model_params}, spk[0], spk[1], emo[0], emo[1], batch["text_ids"],
                               text_lengths, codes, lengths, emovec=emovec, target_tokens=target_tokens)
        row = valid[:, None]
        text_ce, text_acc = masked_cross_entropy(out["text_logits"], out["text_targets"],
                                                 target_mask(text_lengths, out["text_targets"].shape[1]) & row)
        mel_ce, mel_acc = masked_cross_entropy(out["mel_logits"], out["mel_targets"],
                                               target_mask(lengths, out["mel_targets"].shape[1]) & row)
        loss = float(g.text_weight) * text_ce + float(g.mel_weight) * mel_ce
        metrics = {"text_ce": text_ce, "mel_ce": mel_ce, "text_acc": text_acc, "mel_acc": mel_acc}
        if self.adversarial:
            reversed_emovec = gradient_reversal(emovec.astype(jnp.float32), jnp.float32(g.grl_scale))
            logits = self.classifier.apply({"params": params["speaker_classifier"]}, reversed_emovec)
            spk_ce, spk_acc = masked_cross_entropy(logits[:, None], batch["speaker_index"][:, None], row)
            loss = loss + float(g.adversarial_weight) * spk_ce
            metrics.update(speaker_ce=spk_ce, speaker_acc=spk_acc)
        return loss, metrics

    # -- throughput -----------------------------------------------------------------------------
    def sequence_length(self, batch) -> int:
        """GPT sequence: conditioning rows + [start, text, stop] + [start, codes, stop]."""
        return self.model_config.cond_rows + batch["text_ids"].shape[1] + 2 + batch["semantic_features"].shape[1] + 2

    def tokens_in_batch(self, batch) -> int:
        return int(batch["text_ids"].shape[0]) * self.sequence_length(batch)

    def non_embedding_params(self, num_params: int) -> int:
        if self._non_embedding is None:
            from indextts2_jax.models.gpt import abstract_params

            shapes = abstract_params(self.model_config)
            emb = sum(int(np.prod(shapes[k]["embedding"].shape)) for k in
                      ("text_embedding", "mel_embedding", "text_pos_embedding", "mel_pos_embedding", "speed_emb"))
            self._non_embedding = emb
        return num_params - self._non_embedding

    def flops_per_step(self, batch, num_params: int) -> float:
        """6 * non-embedding params * tokens + causal attention (12 * layers * d * S^2 per sequence, fwd+bwd).

        Approximate: the conditioning encoders run over the prompt frames, not the GPT tokens; they are
        counted at the token rate as well (they are small next to the GPT body at official size).
        """
        b = int(batch["text_ids"].shape[0])
        s = self.sequence_length(batch)
        c = self.model_config
        return 6.0 * self.non_embedding_params(num_params) * b * s + 12.0 * c.layers * c.model_dim * s * s * b


# -- init_from: converted official checkpoints ----------------------------------------------------
def prepare_init_from(path: str | os.PathLike, workdir: str | os.PathLike) -> str:
    """An Orbax checkpoint path for ``config.init_from``.

    A converted checkpoint folder (``converted.json`` + ``params/gpt.msgpack``, written by
    ``indextts2_jax.convert.official.save_converted``) is rewritten once as an Orbax checkpoint
    ``<workdir>/init_from_gpt`` holding ``{"gpt": params}``; any other path is returned as is.
    """
    file = converted_component_file(path, "gpt")
    if file is None:
        return str(path)
    return write_init_checkpoint(Path(workdir) / "init_from_gpt", "gpt", lambda: load_params(file))
