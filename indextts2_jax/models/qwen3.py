"""Qwen3 causal LM (HF ``Qwen3ForCausalLM`` numerics): the model behind QwenEmotion, the official
text-to-emotion step (reference §7; ``indextts2_jax.infer.emotion_text``).

Decoder-only, pre-RMSNorm blocks: ``x += o_proj(attn(input_layernorm x)); x += down(silu(gate h) * up h)``
with ``h = post_attention_layernorm x``; ``norm`` at the end; logits ``h @ embed^T`` when the embeddings are
tied (Qwen3-0.6B), else ``lm_head``. Attention: grouped-query (``num_key_value_heads`` K/V heads, each shared
by ``num_attention_heads / num_key_value_heads`` query heads), ``q_norm``/``k_norm`` RMSNorms over each head's
``head_dim`` channels before the rotary embedding, HF's half-split rotary layout (``rotate_half``: channel i
pairs with i + head_dim/2), scale ``head_dim ** -0.5``, float32 softmax. RMSNorm: float32 statistics, the
gain times the normalised input cast back to the compute dtype.

One KV cache layout for prefill and decode: a list of L ``{"k", "v"}`` of shape (B, KV, T, head_dim), one per
layer. A call writes its S new keys and values at ``[index, index + S)`` and every query at position ``p``
attends to the cache slots ``<= p``. The layers are separate modules (``layers_0`` ...), not one scanned block:
under ``nn.scan`` each decode step sliced its layer's weights out of the stacked arrays (a copy of every
weight per token), and a step of the 0.6 B model took 168-194 ms instead of 83 ms (CPU, float32).
Slots are positions: a prompt padded at its end to a bucket writes its pads after the real tokens, and the
decode steps overwrite them in order before any query can see them.

Params (``from_hf``): ``embed_tokens/embedding`` (V, D); ``layers_{i}/...`` with Dense kernels (in, out);
``norm/weight``; ``lm_head/kernel`` (D, V) only when the embeddings are not tied.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from indextts2_jax.errors import ConfigError
from indextts2_jax.nn.dit import RMSNorm  # HF Qwen3RMSNorm's numerics: float32 statistics, cast, times the gain

NEG_INF = float(np.finfo(np.float32).min)


@dataclasses.dataclass(frozen=True)
class Qwen3Config:
    """The fields of an HF Qwen3 ``config.json`` this port reads (Qwen3-0.6B values as defaults)."""

    vocab_size: int = 151936
    hidden_size: int = 1024
    intermediate_size: int = 3072
    num_hidden_layers: int = 28
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 40960
    tie_word_embeddings: bool = True
    attention_bias: bool = False

    @classmethod
    def from_hf(cls, config: Mapping[str, Any]) -> Qwen3Config:
        """Read an HF ``config.json`` dict; raise ConfigError for a model this port does not run."""
        kind = config.get("model_type")
        if kind != "qwen3":
            raise ConfigError(f"config.json: model_type {kind!r}, expected 'qwen3' (a Qwen3 causal LM folder)")
        if config.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"config.json: hidden_act {config['hidden_act']!r}; this port runs 'silu'")
        if config.get("rope_scaling"):
            raise ConfigError(f"config.json: rope_scaling {config['rope_scaling']!r} is not supported (plain RoPE)")
        if config.get("use_sliding_window"):
            raise ConfigError("config.json: use_sliding_window is not supported (full attention only)")
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: config[k] for k in fields if config.get(k) is not None}
        if "head_dim" not in kw:
            kw["head_dim"] = int(config["hidden_size"]) // int(config["num_attention_heads"])
        out = cls(**kw)
        if out.num_attention_heads % out.num_key_value_heads:
            raise ConfigError(f"config.json: {out.num_attention_heads} attention heads are not a multiple of "
                              f"{out.num_key_value_heads} key/value heads")
        return out


def rope_cos_sin(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """positions (B, S) int -> cos, sin (B, S, head_dim) float32 in HF's layout ``cat(freqs, freqs)``."""
    inv = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x (B, S, H, hd), cos/sin (B, S, hd) -> x * cos + rotate_half(x) * sin, in x's dtype."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = cos[:, :, None].astype(x.dtype), sin[:, :, None].astype(x.dtype)
    return x * cos + rotated * sin


class Qwen3Block(nn.Module):
    """One decoder layer. ``__call__(x, cos, sin, mask, index, cache)`` with x (B, S, D), cos/sin (B, S, hd),
    mask (B, 1, S, T) bool, index scalar int32, cache {"k", "v"} (B, KV, T, hd) -> (x', new cache)."""

    config: Qwen3Config
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, cos, sin, mask, index, cache):
        c = self.config
        b, s, _ = x.shape
        h, kv, hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        dense = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        y = RMSNorm(c.rms_norm_eps, self.param_dtype, name="input_layernorm")(x)
        q = nn.Dense(h * hd, use_bias=c.attention_bias, name="q_proj", **dense)(y).reshape(b, s, h, hd)
        k = nn.Dense(kv * hd, use_bias=c.attention_bias, name="k_proj", **dense)(y).reshape(b, s, kv, hd)
        v = nn.Dense(kv * hd, use_bias=c.attention_bias, name="v_proj", **dense)(y).reshape(b, s, kv, hd)
        q = apply_rope(RMSNorm(c.rms_norm_eps, self.param_dtype, name="q_norm")(q), cos, sin)
        k = apply_rope(RMSNorm(c.rms_norm_eps, self.param_dtype, name="k_norm")(k), cos, sin)
        start = (0, 0, index, 0)
        keys = jax.lax.dynamic_update_slice(cache["k"], k.transpose(0, 2, 1, 3).astype(cache["k"].dtype), start)
        values = jax.lax.dynamic_update_slice(cache["v"], v.transpose(0, 2, 1, 3).astype(cache["v"].dtype), start)
        q = q.reshape(b, s, kv, h // kv, hd)
        scores = jnp.einsum("bskgd,bktd->bkgst", q, keys.astype(q.dtype)).astype(jnp.float32) * hd ** -0.5
        scores = jnp.where(mask[:, :, None], scores, NEG_INF)
        probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        att = jnp.einsum("bkgst,bktd->bskgd", probs, values.astype(self.dtype)).reshape(b, s, h * hd)
        x = x + nn.Dense(c.hidden_size, use_bias=c.attention_bias, name="o_proj", **dense)(att)
        y = RMSNorm(c.rms_norm_eps, self.param_dtype, name="post_attention_layernorm")(x)
        gate = nn.Dense(c.intermediate_size, use_bias=False, name="gate_proj", **dense)(y)
        up = nn.Dense(c.intermediate_size, use_bias=False, name="up_proj", **dense)(y)
        x = x + nn.Dense(c.hidden_size, use_bias=False, name="down_proj", **dense)(nn.silu(gate) * up)
        return x, {"k": keys, "v": values}


class Qwen3LM(nn.Module):
    """Qwen3ForCausalLM with a KV cache.

    ``__call__(ids (B, S) int32, cache, index, logits_at=None)`` -> (logits, new cache): the S tokens take
    positions ``index + arange(S)`` and cache slots ``[index, index + S)``; logits (B, S, V) float32, or
    (B, V) at the rows ``logits_at`` (B,) int32 (a prefill's last real token: the vocabulary projection is
    the largest matmul of a step). ``init_cache`` makes the zeroed cache.
    """

    config: Qwen3Config
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def init_cache(self, batch: int, length: int, dtype=None) -> list[dict]:
        c = self.config
        shape = (batch, c.num_key_value_heads, length, c.head_dim)
        dtype = dtype or self.dtype
        return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(c.num_hidden_layers)]

    @nn.compact
    def __call__(self, ids: jax.Array, cache: list[dict], index, logits_at: jax.Array | None = None):
        c = self.config
        b, s = ids.shape
        t = cache[0]["k"].shape[2]
        index = jnp.asarray(index, jnp.int32)
        embed = nn.Embed(c.vocab_size, c.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
                         name="embed_tokens")
        x = embed(ids)
        positions = jnp.broadcast_to(index + jnp.arange(s, dtype=jnp.int32), (b, s))
        cos, sin = rope_cos_sin(positions, c.head_dim, c.rope_theta)
        mask = (jnp.arange(t)[None, :] <= positions[..., None])[:, None]  # (B, 1, S, T)
        new_cache = []
        for i in range(c.num_hidden_layers):
            x, layer_cache = Qwen3Block(c, self.dtype, self.param_dtype, name=f"layers_{i}")(x, cos, sin, mask,
                                                                                              index, cache[i])
            new_cache.append(layer_cache)
        x = RMSNorm(c.rms_norm_eps, self.param_dtype, name="norm")(x)
        if logits_at is not None:
            x = jnp.take_along_axis(x, logits_at[:, None, None].astype(jnp.int32), axis=1)[:, 0]
        if c.tie_word_embeddings:
            logits = embed.attend(x)
        else:
            logits = nn.Dense(c.vocab_size, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                              name="lm_head")(x)
        return logits.astype(jnp.float32), new_cache


# ---------------------------------------------------------------------------------------------
# HF checkpoint -> params
# ---------------------------------------------------------------------------------------------
_LINEAR = {"self_attn.q_proj": "q_proj", "self_attn.k_proj": "k_proj", "self_attn.v_proj": "v_proj",
           "self_attn.o_proj": "o_proj", "mlp.gate_proj": "gate_proj", "mlp.up_proj": "up_proj",
           "mlp.down_proj": "down_proj"}
_NORMS = {"input_layernorm": "input_layernorm", "post_attention_layernorm": "post_attention_layernorm",
          "self_attn.q_norm": "q_norm", "self_attn.k_norm": "k_norm"}


def from_hf(state: Mapping[str, np.ndarray], config: Qwen3Config, dtype=None) -> dict:
    """HF ``Qwen3ForCausalLM`` safetensors tensors (keys ``model.embed_tokens.weight``,
    ``model.layers.{i}.self_attn.q_proj.weight``, ...) -> our params (module docstring), as NumPy arrays in
    ``dtype`` (default: as stored). Raises ConfigError naming missing or unexpected keys and wrong shapes."""
    c = config
    used: set[str] = set()

    def take(key: str, shape: tuple) -> np.ndarray:
        if key not in state:
            raise ConfigError(f"Qwen3 checkpoint: missing tensor {key!r}")
        arr = np.asarray(state[key])
        if arr.shape != shape:
            raise ConfigError(f"Qwen3 checkpoint: {key} has shape {arr.shape}, the config says {shape}")
        used.add(key)
        return arr if dtype is None else arr.astype(dtype)

    d, hd = c.hidden_size, c.head_dim
    out_dims = {"q_proj": c.num_attention_heads * hd, "k_proj": c.num_key_value_heads * hd,
                "v_proj": c.num_key_value_heads * hd, "o_proj": d, "gate_proj": c.intermediate_size,
                "up_proj": c.intermediate_size, "down_proj": d}
    in_dims = {"o_proj": c.num_attention_heads * hd, "down_proj": c.intermediate_size}
    params: dict[str, Any] = {}
    for i in range(c.num_hidden_layers):
        layer: dict[str, dict] = {}
        for hf, ours in _LINEAR.items():
            prefix = f"model.layers.{i}.{hf}"
            layer[ours] = {"kernel": take(prefix + ".weight", (out_dims[ours], in_dims.get(ours, d))).T}
            if c.attention_bias and hf.startswith("self_attn"):
                layer[ours]["bias"] = take(prefix + ".bias", (out_dims[ours],))
        for hf, ours in _NORMS.items():
            size = hd if ours in ("q_norm", "k_norm") else d
            layer[ours] = {"weight": take(f"model.layers.{i}.{hf}.weight", (size,))}
        params[f"layers_{i}"] = layer
    params["embed_tokens"] = {"embedding": take("model.embed_tokens.weight", (c.vocab_size, d))}
    params["norm"] = {"weight": take("model.norm.weight", (d,))}
    if not c.tie_word_embeddings:
        params["lm_head"] = {"kernel": take("lm_head.weight", (c.vocab_size, d)).T}
    extra = sorted(k for k in state if k not in used and not (c.tie_word_embeddings and k == "lm_head.weight"))
    if extra:
        raise ConfigError(f"Qwen3 checkpoint: {len(extra)} tensors this config does not use, e.g. {extra[:5]} "
                          "(a checkpoint of another config?)")
    return params
