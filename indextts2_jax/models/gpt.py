"""UnifiedVoice: the IndexTTS2 text-to-semantic GPT (reference §2 ``gpt``, §3.3, §5).

Parts: speaker Conformer + Perceiver (32 latents), emotion Conformer + Perceiver (1 latent, width
1024) + ``emovec_layer`` + ``emo_layer``, text/mel token tables with learned position tables, a GPT-2
stack without ``wte``/``wpe``, ``final_norm`` after ``ln_f``, and ``text_head``/``mel_head``.

Sequence (§5.4): ``[conds (34 rows)][start_text, text, stop_text][start_mel, codes, stop_mel]`` with
``conds = [speaker_latent + emovec (32 rows), speed_emb[1], speed_emb[0]]``.

Duration control (§5.4, §12, §15). The paper puts one duration slot ``p = W_num h(T)`` in the
prefix, with ``h(T)`` the one-hot of the target semantic-token count T and ``W_num`` tied to the
semantic position table; ``p = 0`` selects free-length generation. The release does not wire it:
its prefix always holds the two constant ``speed_emb`` rows. Here ``UnifiedVoiceConfig.
duration_control`` (default False = the release) switches the conditioning block to
``[speaker_latent + emovec, speed_emb[1], p]`` with ``p = mel_pos_embedding[T]`` for T > 0 and
``p = 0`` for T = 0 (free mode); the slot replaces the release's last row (``speed_emb[0]``, called
``duration_emb`` in the official code). What the released weights support: only the exact-count mode
of the decoder (``infer/generate.py``: the stop token is masked before N codes and forced at N),
which needs no training. The ``p`` slot is *not* supported by the released weights: it must be
trained (stage 1 with ``p`` zeroed for 30 % of the examples, §12) before ``duration_control=True``
gives meaningful durations.

Layouts: activations are channels-last; logits are (B, S, V) (the official code returns (B, V, S)).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from indextts2_jax.convert.state_dict import StateDict, check_params_match
from indextts2_jax.errors import CheckpointError, ConfigError
from indextts2_jax.nn.conformer import ConformerConfig, ConformerEncoder, conformer_from_torch
from indextts2_jax.nn.gpt2 import GPT2Transformer
from indextts2_jax.nn.layers import dense, layer_norm
from indextts2_jax.nn.perceiver import PerceiverConfig, PerceiverResampler, perceiver_from_torch

COND_FEATURES = 1024  # w2v-BERT feature width; hard-coded in the official UnifiedVoice
EMO_DIM = 1024  # the emotion perceiver width, hard-coded in the official UnifiedVoice


@dataclass(frozen=True)
class ConditionModuleConfig:
    """One ``condition_module`` / ``emo_condition_module`` dict of the official config."""

    output_size: int = 512
    linear_units: int = 2048
    attention_heads: int = 8
    num_blocks: int = 6
    perceiver_mult: float = 2
    input_layer: str = "conv2d2"

    @classmethod
    def from_official(cls, d: Mapping) -> "ConditionModuleConfig":
        unknown = set(d) - {"output_size", "linear_units", "attention_heads", "num_blocks", "perceiver_mult",
                            "input_layer"}
        if unknown:
            raise ConfigError(f"condition module: unknown keys {sorted(unknown)}")
        cfg = cls(**dict(d))
        if cfg.input_layer != "conv2d2":
            raise ConfigError(f"condition module: only input_layer='conv2d2' is implemented, got {cfg.input_layer!r}")
        return cfg

    def conformer(self, input_size: int = COND_FEATURES) -> ConformerConfig:
        """The conformer of this module over ``input_size``-wide features (1024 = w2v-BERT, official)."""
        return ConformerConfig(input_size=input_size, output_size=self.output_size,
                               attention_heads=self.attention_heads, linear_units=self.linear_units,
                               num_blocks=self.num_blocks)


EMO_DEFAULT = ConditionModuleConfig(output_size=512, linear_units=1024, attention_heads=4, num_blocks=4)


@dataclass(frozen=True)
class UnifiedVoiceConfig:
    """UnifiedVoice hyper-parameters; defaults are the official IndexTTS-2 ``gpt`` section."""

    model_dim: int = 1280
    layers: int = 24
    heads: int = 20
    max_mel_tokens: int = 1815
    max_text_tokens: int = 600
    number_text_tokens: int = 12000
    number_mel_codes: int = 8194
    start_mel_token: int = 8192
    stop_mel_token: int = 8193
    start_text_token: int = 0
    stop_text_token: int = 1
    mel_length_compression: int = 1024
    max_conditioning_inputs: int = 1
    types: int = 1
    condition_num_latent: int = 32
    condition_module: ConditionModuleConfig = field(default_factory=ConditionModuleConfig)
    emo_condition_module: ConditionModuleConfig = EMO_DEFAULT
    duration_control: bool = False  # the paper's p = W_num h(T) slot; False = the release (see module docstring)
    # Our extension: the width of the prompt features both conditioning conformers read. The official
    # code hard-codes 1024 (w2v-BERT); the CPU demo conditions on 160-d stacked mel frames.
    condition_input_size: int = COND_FEATURES
    # Our extension: the emotion perceiver's width (its one latent feeds ``emovec_layer``). The official code
    # hard-codes 1024; at 1024 it holds 9.5M params whatever the model width, so small models shrink it.
    emotion_dim: int = EMO_DIM

    @classmethod
    def from_official(cls, d: Mapping) -> "UnifiedVoiceConfig":
        """From ``UnifiedVoice(**d)`` kwargs (config.yaml's ``gpt`` section, optionally ``use_accel``)."""
        d = dict(d)
        for key in ("use_accel", "checkpointing"):  # torch runtime switches, no effect on the math
            d.pop(key, None)
        checks = {"condition_type": "conformer_perceiver", "use_mel_codes_as_input": True,
                  "train_solo_embeddings": False, "spk_cond_mode": "conformer"}
        for key, want in checks.items():
            if key in d and d.pop(key) != want:
                raise ConfigError(f"UnifiedVoice: only {key}={want!r} is implemented")
        kwargs = {}
        if "condition_module" in d:
            kwargs["condition_module"] = ConditionModuleConfig.from_official(d.pop("condition_module"))
        if "emo_condition_module" in d:
            kwargs["emo_condition_module"] = ConditionModuleConfig.from_official(d.pop("emo_condition_module"))
        names = {f for f in cls.__dataclass_fields__} - {"condition_module", "emo_condition_module", "duration_control",
                                                          "condition_input_size", "emotion_dim"}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"UnifiedVoice: unknown kwargs {sorted(unknown)}")
        kwargs.update(d)
        cfg = cls(**kwargs)
        if cfg.model_dim % cfg.heads:
            raise ConfigError("UnifiedVoice: model_dim must be divisible by heads")
        return cfg

    def with_duration_control(self, enabled: bool = True) -> "UnifiedVoiceConfig":
        return replace(self, duration_control=enabled)

    # -- derived sizes ----------------------------------------------------------------------
    @property
    def text_vocab(self) -> int:
        return self.number_text_tokens * self.types + 1

    @property
    def text_positions(self) -> int:
        return self.max_text_tokens + 2

    @property
    def mel_positions(self) -> int:
        return self.max_mel_tokens + 2 + self.max_conditioning_inputs

    @property
    def cond_rows(self) -> int:
        """Rows of the conditioning block: the speaker latents plus two duration/speed rows."""
        return self.condition_num_latent + 2

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.heads

    def speaker_perceiver(self) -> PerceiverConfig:
        m = self.condition_module
        return PerceiverConfig(dim=self.model_dim, dim_context=m.output_size, num_latents=self.condition_num_latent,
                               ff_mult=m.perceiver_mult, heads=m.attention_heads)

    def emotion_perceiver(self) -> PerceiverConfig:
        m = self.emo_condition_module
        return PerceiverConfig(dim=self.emotion_dim, dim_context=m.output_size, num_latents=1, ff_mult=m.perceiver_mult,
                               heads=m.attention_heads)


def _embed(num: int, dim: int, param_dtype, axes=("vocab", "embed")) -> nn.Embed:
    return nn.Embed(num, dim, param_dtype=param_dtype,
                    embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), axes))


def pad_after_lengths(ids: jax.Array, lengths: jax.Array | None, value: int) -> jax.Array:
    """Set ``ids[b, t] = value`` for ``t >= lengths[b]`` (official set_text/mel_padding)."""
    if lengths is None:
        return ids
    keep = jnp.arange(ids.shape[1])[None, :] < lengths[:, None]
    return jnp.where(keep, ids, value)


class UnifiedVoice(nn.Module):
    """The official UnifiedVoice (conformer_perceiver conditioning, mel codes as input)."""

    config: UnifiedVoiceConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    # training options of the GPT-2 stack's causal forward (``nn/gpt2.py``): how it attends, what it rematerialises
    attention: str = "einsum"
    remat: str = "none"

    def setup(self):
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        d = cfg.model_dim
        self.conditioning_encoder = ConformerEncoder(cfg.condition_module.conformer(cfg.condition_input_size), **kw)
        self.perceiver_encoder = PerceiverResampler(cfg.speaker_perceiver(), **kw)
        self.emo_conditioning_encoder = ConformerEncoder(
            cfg.emo_condition_module.conformer(cfg.condition_input_size), **kw)
        self.emo_perceiver_encoder = PerceiverResampler(cfg.emotion_perceiver(), **kw)
        self.emovec_layer = dense(d, ("mlp", "embed"), **kw)
        self.emo_layer = dense(d, ("embed", "mlp"), **kw)
        self.speed_emb = _embed(2, d, self.param_dtype, ("length", "embed"))
        self.text_embedding = _embed(cfg.text_vocab, d, self.param_dtype)
        self.text_pos_embedding = _embed(cfg.text_positions, d, self.param_dtype,
                                         ("length", "embed"))
        self.mel_embedding = _embed(cfg.number_mel_codes, d, self.param_dtype)
        self.mel_pos_embedding = _embed(cfg.mel_positions, d, self.param_dtype,
                                        ("length", "embed"))
        self.gpt = GPT2Transformer(d, cfg.layers, cfg.heads, attention=self.attention, remat=self.remat, **kw)
        self.final_norm = layer_norm(param_dtype=self.param_dtype)
        self.text_head = dense(cfg.text_vocab, ("embed", "vocab"), **kw)
        self.mel_head = dense(cfg.number_mel_codes, ("embed", "vocab"), **kw)

    # -- conditioning ---------------------------------------------------------------------------
    def speaker_conditioning(self, features: jax.Array, lengths: jax.Array, return_conformer: bool = False):
        """get_conditioning: features (B, T, condition_input_size), lengths (B,) -> speaker latents (B, 32, D).

        With ``return_conformer`` also the conformer output (B, T', C) and its mask (B, T').
        """
        enc, mask = self.conditioning_encoder(features, lengths)
        key_mask = jnp.concatenate([jnp.ones((mask.shape[0], self.config.condition_num_latent), bool), mask], 1)
        latents = self.perceiver_encoder(enc, key_mask)
        return (latents, enc, mask) if return_conformer else latents

    def emotion_conditioning(self, features: jax.Array, lengths: jax.Array, return_conformer: bool = False):
        """get_emo_conditioning: features (B, T, 1024), lengths (B,) -> (B, 1024)."""
        enc, mask = self.emo_conditioning_encoder(features, lengths)
        key_mask = jnp.concatenate([jnp.ones((mask.shape[0], 1), bool), mask], 1)
        out = self.emo_perceiver_encoder(enc, key_mask)[:, 0]
        return (out, enc, mask) if return_conformer else out

    def emovec(self, features: jax.Array, lengths: jax.Array) -> jax.Array:
        """get_emovec: emo_layer(emovec_layer(emotion_conditioning)) -> (B, D)."""
        return self.emo_layer(self.emovec_layer(self.emotion_conditioning(features, lengths)))

    def merge_emovec(self, spk_features, spk_lengths, emo_features, emo_lengths, alpha=1.0) -> jax.Array:
        """base + alpha * (emo - base) with base = emovec(speaker prompt), emo = emovec(emotion prompt)."""
        emo = self.emovec(emo_features, emo_lengths)
        base = self.emovec(spk_features, spk_lengths)
        return base + alpha * (emo - base)

    def conditioning_block(self, speaker_latents: jax.Array, emovec: jax.Array,
                           target_tokens: jax.Array | None = None) -> jax.Array:
        """(B, 32, D) latents + (B, D) emovec -> conds (B, 34, D).

        Release (``duration_control=False``): ``[latents + emovec, speed_emb[1], speed_emb[0]]``;
        ``target_tokens`` must be None. With ``duration_control``: ``[latents + emovec, speed_emb[1], p]``,
        ``p = mel_pos_embedding[T]`` where ``target_tokens`` T (B,) > 0, else 0 (free length).
        """
        b = speaker_latents.shape[0]
        d = self.config.model_dim
        body = speaker_latents.astype(self.dtype) + emovec.astype(self.dtype)[:, None, :]
        row1 = jnp.broadcast_to(self.speed_emb(jnp.ones((b,), jnp.int32))[:, None], (b, 1, d))
        if not self.config.duration_control:
            if target_tokens is not None:
                raise ConfigError("target_tokens needs UnifiedVoiceConfig.duration_control=True (trained weights)")
            last = self.speed_emb(jnp.zeros((b,), jnp.int32))[:, None]
        else:
            if target_tokens is None:
                target_tokens = jnp.zeros((b,), jnp.int32)
            t = jnp.clip(target_tokens, 0, self.config.mel_positions - 1)
            last = jnp.where((target_tokens > 0)[:, None, None], self.mel_pos_embedding(t)[:, None], 0.0)
        return jnp.concatenate([body, row1.astype(self.dtype), last.astype(self.dtype)], axis=1)

    def _check_lengths(self, text_len: int, mel_len: int) -> None:
        """Position tables are finite; an out-of-range lookup would silently give NaN rows, so refuse."""
        if text_len > self.config.text_positions:
            raise ConfigError(f"text of {text_len - 2} tokens exceeds max_text_tokens={self.config.max_text_tokens}")
        if mel_len > self.config.mel_positions:
            raise ConfigError(f"{mel_len - 2} mel codes exceed the mel position table ({self.config.mel_positions})")

    # -- embeddings -----------------------------------------------------------------------------
    def embed_mel(self, codes: jax.Array, positions: jax.Array) -> jax.Array:
        """mel_embedding(codes) + mel_pos_embedding(positions); same shapes (B, S) -> (B, S, D)."""
        return (self.mel_embedding(codes) + self.mel_pos_embedding(positions)).astype(self.dtype)

    def embed_text(self, ids: jax.Array, positions: jax.Array) -> jax.Array:
        return (self.text_embedding(ids) + self.text_pos_embedding(positions)).astype(self.dtype)

    def generation_prefix(self, conds: jax.Array, text_ids: jax.Array, text_lengths: jax.Array | None = None):
        """prepare_gpt_inputs: the left-padded ``[pad][conds][start_text, text, stop_text]`` rows.

        conds (B, 34, D); text_ids (B, L) (start/stop ids anywhere are dropped, as officially; entries
        at or past ``text_lengths`` too). Returns (prefix (B, 34 + L + 2, D), mask (B, 34 + L + 2) bool).
        """
        cfg = self.config
        b, length = text_ids.shape
        self._check_lengths(length + 2, 0)
        valid = (text_ids != cfg.start_text_token) & (text_ids != cfg.stop_text_token)
        if text_lengths is not None:
            valid &= jnp.arange(length)[None, :] < text_lengths[:, None]
        order = jnp.argsort(~valid, axis=1, stable=True)
        packed = jnp.take_along_axis(text_ids, order, axis=1)
        n = valid.sum(axis=1)  # (B,)
        j = jnp.arange(length + 2)[None, :]
        body = jnp.take_along_axis(packed, jnp.clip(j - 1, 0, length - 1), axis=1)
        ids = jnp.where(j == 0, cfg.start_text_token, jnp.where(j <= n[:, None], body, cfg.stop_text_token))
        positions = jnp.broadcast_to(jnp.minimum(j, cfg.text_positions - 1), ids.shape)
        text_emb = self.embed_text(ids, positions)
        rows = jnp.concatenate([conds.astype(self.dtype), text_emb], axis=1)  # right-padded
        total = rows.shape[1]
        shift = (length - n)[:, None]  # left padding per row
        k = jnp.arange(total)[None, :]
        src = jnp.clip(k - shift, 0, total - 1)
        prefix = jnp.take_along_axis(rows, src[:, :, None], axis=1)
        mask = k >= shift
        return jnp.where(mask[:, :, None], prefix, 0).astype(self.dtype), mask

    # -- transformer + heads ----------------------------------------------------------------------
    def transformer(self, x: jax.Array, mask: jax.Array, caches=None, cache_index=None, ancestry=None):
        """GPT-2 stack incl. ``ln_f``: x (B, S, D), mask (B|1, 1, S, K) -> (hidden, caches); ``ancestry``
        (G, K, T) for beam decode steps (``nn/gpt2.py``)."""
        return self.gpt(x, mask, caches, cache_index, ancestry)

    def mel_logits(self, hidden: jax.Array) -> jax.Array:
        """mel_head(final_norm(hidden)) in float32: (B, S, D) -> (B, S, number_mel_codes)."""
        return self.mel_head(self.final_norm(hidden).astype(self.dtype)).astype(jnp.float32)

    def teacher_forced(self, conds: jax.Array, text_ids: jax.Array, text_lengths: jax.Array | None,
                       mel_codes: jax.Array, mel_lengths: jax.Array | None, return_logits: bool = True) -> dict:
        """The official training ``forward``/``get_logits`` over ``[conds][text][mel]`` (causal, no padding mask).

        conds (B, 34, D); text_ids (B, L); mel_codes (B, Lm). Returns a dict with ``latent`` (B, Lm, D) =
        final_norm(h) at inputs [start, c1 .. c_{Lm-1}] (what S2M takes), the aligned ``text_inputs``,
        ``text_targets`` (B, L+2), ``mel_inputs``, ``mel_targets`` (B, Lm+2) and, with ``return_logits``,
        ``text_logits`` (B, L+2, Vt) and ``mel_logits`` (B, Lm+2, Vm) in float32.
        """
        cfg = self.config
        b = conds.shape[0]
        text = pad_after_lengths(text_ids, text_lengths, cfg.stop_text_token)
        text = jnp.concatenate([text, jnp.full((b, 1), cfg.stop_text_token, text.dtype)], axis=1)
        text_inputs = jnp.concatenate([jnp.full((b, 1), cfg.start_text_token, text.dtype), text], axis=1)
        text_targets = jnp.concatenate([text, jnp.full((b, 1), cfg.stop_text_token, text.dtype)], axis=1)
        mel = pad_after_lengths(mel_codes, mel_lengths, cfg.stop_mel_token)
        mel = jnp.concatenate([mel, jnp.full((b, 1), cfg.stop_mel_token, mel.dtype)], axis=1)
        mel_inputs = jnp.concatenate([jnp.full((b, 1), cfg.start_mel_token, mel.dtype), mel], axis=1)
        mel_targets = jnp.concatenate([mel, jnp.full((b, 1), cfg.stop_mel_token, mel.dtype)], axis=1)
        lt, lm = text_inputs.shape[1], mel_inputs.shape[1]
        self._check_lengths(lt, lm)
        text_emb = self.embed_text(text_inputs, jnp.broadcast_to(jnp.arange(lt), text_inputs.shape))
        mel_emb = self.embed_mel(mel_inputs, jnp.broadcast_to(jnp.arange(lm), mel_inputs.shape))
        x = jnp.concatenate([conds.astype(self.dtype), text_emb, mel_emb], axis=1)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        hidden, _ = self.gpt(x, None)  # causal
        enc = self.final_norm(hidden[:, conds.shape[1]:]).astype(self.dtype)
        text_part, mel_part = enc[:, :lt], enc[:, -lm:]
        out = {"latent": mel_part[:, :-2], "text_inputs": text_inputs, "text_targets": text_targets,
               "mel_inputs": mel_inputs, "mel_targets": mel_targets}
        if return_logits:
            out["text_logits"] = self.text_head(text_part).astype(jnp.float32)
            out["mel_logits"] = self.mel_head(mel_part).astype(jnp.float32)
        return out

    def __call__(self, spk_features, spk_lengths, emo_features, emo_lengths, text_ids, text_lengths, mel_codes,
                 mel_lengths, emovec=None, target_tokens=None, return_logits: bool = True) -> dict:
        """Training forward (official ``forward(do_spk_cond=True)``): conditioning from prompt features.

        spk_features (B, T, 1024), emo_features (B, T_e, 1024) with their lengths; ``emovec`` (B, D)
        overrides the emotion path. Returns :meth:`teacher_forced`'s dict plus ``conds``.
        """
        latents = self.speaker_conditioning(spk_features, spk_lengths)
        if emovec is None:
            emovec = self.emovec(emo_features, emo_lengths)
        conds = self.conditioning_block(latents, emovec, target_tokens)
        out = self.teacher_forced(conds, text_ids, text_lengths, mel_codes, mel_lengths, return_logits)
        out["conds"] = conds
        return out


def sample_duration_targets(rng: jax.Array, mel_lengths: jax.Array, drop_prob: float = 0.3) -> jax.Array:
    """Training targets for the duration slot (paper §Duration Control): the true code count per example,
    replaced by 0 (free mode, p = 0) with probability ``drop_prob``. mel_lengths (B,) -> (B,) int32."""
    keep = jax.random.uniform(rng, mel_lengths.shape) >= drop_prob
    return jnp.where(keep, mel_lengths, 0).astype(jnp.int32)


# ---------------------------------------------------------------------------------------------
# loss
# ---------------------------------------------------------------------------------------------
def masked_cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean token cross-entropy and accuracy over ``mask``: logits (B, S, V), targets/mask (B, S)."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    m = mask.astype(jnp.float32)
    count = jnp.maximum(m.sum(), 1.0)
    acc = ((jnp.argmax(logits, -1) == targets) * m).sum() / count
    return (nll * m).sum() / count, acc


def target_mask(lengths: jax.Array, width: int) -> jax.Array:
    """(B,) sequence lengths -> (B, width) mask of the targets that count: the ids plus one stop token."""
    return jnp.arange(width)[None, :] < (lengths[:, None] + 1)


def t2s_loss(outputs: Mapping, text_lengths: jax.Array, mel_lengths: jax.Array, text_weight: float = 0.01,
             mel_weight: float = 1.0) -> tuple[jax.Array, dict]:
    """Weighted text + mel cross-entropy of a :meth:`UnifiedVoice.teacher_forced` output.

    Targets are ``text_targets`` (ids, then stop) and ``mel_targets`` (codes, then stop); positions past
    ``length + 1`` (padding and the duplicate trailing stop) are ignored. ``text_weight`` 0.01 follows the
    Tortoise/IndexTTS convention (the IndexTTS2 paper mentions only the mel term; set 0 to drop it).
    Returns (loss, {"text_ce", "mel_ce", "text_acc", "mel_acc"}).
    """
    text_ce, text_acc = masked_cross_entropy(
        outputs["text_logits"], outputs["text_targets"], target_mask(text_lengths, outputs["text_targets"].shape[1]))
    mel_ce, mel_acc = masked_cross_entropy(
        outputs["mel_logits"], outputs["mel_targets"], target_mask(mel_lengths, outputs["mel_targets"].shape[1]))
    loss = text_weight * text_ce + mel_weight * mel_ce
    return loss, {"text_ce": text_ce, "mel_ce": mel_ce, "text_acc": text_acc, "mel_acc": mel_acc}


def gpt_loss(model: UnifiedVoice, params, batch: Mapping, text_weight: float = 0.01, mel_weight: float = 1.0,
             return_outputs: bool = False):
    """Pure loss of a batch: keys ``spk_features, spk_lengths, emo_features, emo_lengths, text_ids, text_lengths,
    mel_codes, mel_lengths`` (optional ``emovec``, ``target_tokens``). Returns (loss, parts), or
    (loss, parts, model outputs) with ``return_outputs``."""
    out = model.apply({"params": params}, batch["spk_features"], batch["spk_lengths"], batch["emo_features"],
                      batch["emo_lengths"], batch["text_ids"], batch["text_lengths"], batch["mel_codes"],
                      batch["mel_lengths"], emovec=batch.get("emovec"), target_tokens=batch.get("target_tokens"))
    loss, parts = t2s_loss(out, batch["text_lengths"], batch["mel_lengths"], text_weight, mel_weight)
    return (loss, parts, out) if return_outputs else (loss, parts)


# ---------------------------------------------------------------------------------------------
# conversion
# ---------------------------------------------------------------------------------------------
def abstract_params(config: UnifiedVoiceConfig) -> dict:
    """ShapeDtypeStructs of the (unboxed) params of :class:`UnifiedVoice`."""
    model = UnifiedVoice(config)
    f32 = jnp.float32
    width = config.condition_input_size
    args = (
        jax.ShapeDtypeStruct((1, 9, width), f32), jax.ShapeDtypeStruct((1,), jnp.int32),
        jax.ShapeDtypeStruct((1, 9, width), f32), jax.ShapeDtypeStruct((1,), jnp.int32),
        jax.ShapeDtypeStruct((1, 3), jnp.int32), jax.ShapeDtypeStruct((1,), jnp.int32),
        jax.ShapeDtypeStruct((1, 3), jnp.int32), jax.ShapeDtypeStruct((1,), jnp.int32),
    )
    shapes = jax.eval_shape(lambda *a: model.init(jax.random.PRNGKey(0), *a), *args)
    return nn.unbox(shapes)["params"]


def init_params(config: UnifiedVoiceConfig, rng: jax.Array) -> dict:
    """Random plain params (for tests and benchmarks)."""
    model = UnifiedVoice(config)
    width = config.condition_input_size
    args = (jnp.zeros((1, 9, width)), jnp.array([9]), jnp.zeros((1, 9, width)), jnp.array([9]),
            jnp.zeros((1, 3), jnp.int32), jnp.array([3]), jnp.zeros((1, 3), jnp.int32), jnp.array([3]))
    return nn.unbox(jax.jit(model.init)(rng, *args))["params"]


def from_torch(state_dict: Mapping, config: UnifiedVoiceConfig) -> dict:
    """Strict conversion of an official ``gpt.pth`` state dict (flat, or under ``"model"``) to params.

    Ignored on purpose: HF causal-mask buffers ``gpt.h.N.attn.bias``/``masked_bias`` (recomputed),
    ``inference_model.*`` (aliases of the same tensors made by post_init_gpt2_config) and ``gpt.wte.*``
    (an alias of ``mel_embedding`` set by post_init_gpt2_config). ``*.embed.pos_enc.pe`` is checked
    against the recomputed sinusoid table.
    """
    if "model" in state_dict and not hasattr(state_dict["model"], "shape"):
        state_dict = state_dict["model"]
    sd = StateDict(state_dict)
    sd.ignore(r"gpt\.h\.\d+\.attn\.(bias|masked_bias)$", r"inference_model\.", r"gpt\.wte\.")
    gpt = sd.sub("gpt")
    params = {
        "conditioning_encoder": conformer_from_torch(sd.sub("conditioning_encoder"),
                                                     config.condition_module.conformer(config.condition_input_size)),
        "perceiver_encoder": perceiver_from_torch(sd.sub("perceiver_encoder"), config.speaker_perceiver()),
        "emo_conditioning_encoder": conformer_from_torch(sd.sub("emo_conditioning_encoder"),
                                                         config.emo_condition_module.conformer(
                                                             config.condition_input_size)),
        "emo_perceiver_encoder": perceiver_from_torch(sd.sub("emo_perceiver_encoder"), config.emotion_perceiver()),
        "emovec_layer": sd.sub("emovec_layer").linear(bias=True),
        "emo_layer": sd.sub("emo_layer").linear(bias=True),
        "speed_emb": sd.sub("speed_emb").embedding(),
        "text_embedding": sd.sub("text_embedding").embedding(),
        "text_pos_embedding": sd.sub("text_pos_embedding.emb").embedding(),
        "mel_embedding": sd.sub("mel_embedding").embedding(),
        "mel_pos_embedding": sd.sub("mel_pos_embedding.emb").embedding(),
        "final_norm": sd.sub("final_norm").layer_norm(),
        "text_head": sd.sub("text_head").linear(bias=True),
        "mel_head": sd.sub("mel_head").linear(bias=True),
        "gpt": {"ln_f": gpt.sub("ln_f").layer_norm()},
    }
    for i in range(config.layers):
        blk = gpt.sub(f"h.{i}")
        params["gpt"][f"h_{i}"] = {
            "ln_1": blk.sub("ln_1").layer_norm(),
            "ln_2": blk.sub("ln_2").layer_norm(),
            "attn": {"c_attn": blk.sub("attn.c_attn").hf_conv1d(), "c_proj": blk.sub("attn.c_proj").hf_conv1d()},
            "mlp": {"c_fc": blk.sub("mlp.c_fc").hf_conv1d(), "c_proj": blk.sub("mlp.c_proj").hf_conv1d()},
        }
    wte_keys = [k for k in sd.keys() if k.startswith("gpt.wte.")]
    if wte_keys and not np.array_equal(np.asarray(state_dict["gpt.wte.weight"]), params["mel_embedding"]["embedding"]):
        raise CheckpointError("gpt.wte.weight differs from mel_embedding.weight (expected an alias)")
    if sd.has("gpt.wpe.weight"):
        raise CheckpointError("gpt.wpe.weight present: UnifiedVoice replaces GPT-2 positions with zeros")
    sd.finish()
    check_params_match(params, abstract_params(config), "UnifiedVoice params")
    return params
