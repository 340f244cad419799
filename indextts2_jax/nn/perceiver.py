"""Perceiver resampler of the IndexTTS2 conditioning paths (reference §5.2).

N learned latents attend (no pre-norm) over ``concat(latents, proj_context(context))``; each of the
``depth`` layers is ``latents += Attn(latents, ctx); latents += GEGLU-FF(latents)``; the output is
an RMSNorm ``x / max(||x||, 1e-12) * sqrt(D) * gamma``.

Shapes: context (B, T, dim_context), mask (B, N + T) bool or None -> latents (B, N, D).
The key mask covers the N latent rows first (always True in UnifiedVoice) then the context frames.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from indextts2_jax.convert.state_dict import StateDict, check_params_match
from indextts2_jax.errors import ConfigError
from indextts2_jax.nn.conformer import init_shapes
from indextts2_jax.nn.layers import dense


@dataclass(frozen=True)
class PerceiverConfig:
    """Constructor kwargs of the official ``PerceiverResampler``."""

    dim: int = 1280
    depth: int = 2
    dim_context: int | None = None
    num_latents: int = 32
    dim_head: int = 64
    heads: int = 8
    ff_mult: float = 4

    @classmethod
    def from_official(cls, d: Mapping) -> "PerceiverConfig":
        d = dict(d)
        if d.pop("use_flash_attn", False):
            raise ConfigError("PerceiverResampler: use_flash_attn is a torch backend switch; leave it False")
        unknown = set(d) - {"dim", "depth", "dim_context", "num_latents", "dim_head", "heads", "ff_mult"}
        if unknown:
            raise ConfigError(f"PerceiverResampler: unknown kwargs {sorted(unknown)}")
        return cls(**d)

    @property
    def context_dim(self) -> int:
        return self.dim if self.dim_context is None else self.dim_context

    @property
    def ff_inner(self) -> int:
        """int(dim * ff_mult * 2 / 3), as the official FeedForward computes it."""
        return int(self.dim * self.ff_mult * 2 / 3)


class PerceiverAttention(nn.Module):
    """Cross-attention of the latents over ``concat(latents, context)``; no biases; scale dim_head^-0.5."""

    config: PerceiverConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, latents: jax.Array, context: jax.Array, mask: jax.Array | None) -> jax.Array:
        """latents (B, N, D), context (B, T, D), mask (B, N + T) or None -> (B, N, D)."""
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        inner = cfg.dim_head * cfg.heads
        b, n, _ = latents.shape
        kv_input = jnp.concatenate([latents, context], axis=1)
        q = dense(inner, ("embed", "mlp"), use_bias=False, name="to_q", **kw)(latents)
        kv = dense(2 * inner, ("embed", "mlp"), use_bias=False, name="to_kv", **kw)(kv_input)
        k, v = jnp.split(kv, 2, axis=-1)
        q = q.reshape(b, n, cfg.heads, cfg.dim_head)
        k = k.reshape(b, -1, cfg.heads, cfg.dim_head)
        v = v.reshape(b, -1, cfg.heads, cfg.dim_head)
        sim = jnp.einsum("bihd,bjhd->bhij", q, k).astype(jnp.float32) * (cfg.dim_head**-0.5)
        if mask is not None:
            sim = jnp.where(mask[:, None, None, :], sim, -jnp.finfo(jnp.float32).max)
        attn = jax.nn.softmax(sim, axis=-1).astype(v.dtype)
        out = jnp.einsum("bhij,bjhd->bihd", attn, v).reshape(b, n, inner)
        return dense(cfg.dim, ("mlp", "embed"), use_bias=False, name="to_out", **kw)(out)


class GEGLUFeedForward(nn.Module):
    """Linear(D -> 2I) -> value * gelu_exact(gate) -> Linear(I -> D)."""

    config: PerceiverConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = dense(2 * cfg.ff_inner, ("embed", "mlp"), name="proj_in", **kw)(x)
        value, gate = jnp.split(h, 2, axis=-1)
        h = jax.nn.gelu(gate, approximate=False) * value
        return dense(cfg.dim, ("mlp", "embed"), name="proj_out", **kw)(h)


class PerceiverResampler(nn.Module):
    """The official ``PerceiverResampler`` (einsum path, no flash attention)."""

    config: PerceiverConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, context: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """context (B, T, dim_context), mask (B, num_latents + T) bool or None -> (B, num_latents, dim)."""
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = context.astype(self.dtype)
        if cfg.context_dim != cfg.dim:
            x = dense(cfg.dim, ("embed", "mlp"), name="proj_context", **kw)(x)
        latents = self.param(
            "latents",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), ("length", "embed")),
            (cfg.num_latents, cfg.dim),
            self.param_dtype,
        )
        lat = jnp.broadcast_to(latents.astype(self.dtype), (x.shape[0], cfg.num_latents, cfg.dim))
        for i in range(cfg.depth):
            lat = lat + PerceiverAttention(cfg, name=f"layers_{i}_attn", **kw)(lat, x, mask)
            lat = lat + GEGLUFeedForward(cfg, name=f"layers_{i}_ff", **kw)(lat)
            lat = nn.with_logical_constraint(lat, ("batch", "length", "embed"))
        gamma = self.param(
            "norm_gamma", nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)), (cfg.dim,),
            self.param_dtype,
        )
        lat32 = lat.astype(jnp.float32)
        norm = jnp.sqrt(jnp.sum(lat32 * lat32, axis=-1, keepdims=True))
        out = lat32 / jnp.maximum(norm, 1e-12) * math.sqrt(cfg.dim) * gamma
        return out.astype(self.dtype)


def perceiver_from_torch(sd: StateDict, config: PerceiverConfig) -> dict:
    """Params of :class:`PerceiverResampler` from an official state dict view (caller runs ``finish``)."""
    inner = config.dim_head * config.heads
    params: dict = {"latents": sd.take("latents", (config.num_latents, config.dim))}
    if config.context_dim != config.dim:
        params["proj_context"] = sd.sub("proj_context").linear(bias=True)
    for i in range(config.depth):
        attn = sd.sub(f"layers.{i}.0")
        ff = sd.sub(f"layers.{i}.1")
        params[f"layers_{i}_attn"] = {
            "to_q": {"kernel": attn.take("to_q.weight", (inner, config.dim)).T},
            "to_kv": {"kernel": attn.take("to_kv.weight", (2 * inner, config.dim)).T},
            "to_out": {"kernel": attn.take("to_out.weight", (config.dim, inner)).T},
        }
        params[f"layers_{i}_ff"] = {
            "proj_in": ff.sub("0").linear(bias=True),
            "proj_out": ff.sub("2").linear(bias=True),
        }
    params["norm_gamma"] = sd.take("norm.gamma", (config.dim,))
    return jax.tree.map(np.ascontiguousarray, params)


def from_torch(state_dict: Mapping[str, np.ndarray], config: PerceiverConfig) -> dict:
    """Strict conversion of a standalone official ``PerceiverResampler`` state dict to params."""
    sd = StateDict(state_dict)
    params = perceiver_from_torch(sd, config)
    sd.finish()
    ctx = jax.ShapeDtypeStruct((1, 3, config.context_dim), jnp.float32)
    check_params_match(params, init_shapes(PerceiverResampler(config), ctx), "PerceiverResampler params")
    return params
