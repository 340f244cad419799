"""Diffusion-transformer building blocks (the S2M estimator's transformer, gpt-fast style).

All modules are channels-last: activations are ``(B, T, D)``. Norms, RoPE and the attention softmax
run in float32 whatever the compute ``dtype`` is; matmuls run in ``dtype``.

Pieces:
- :class:`TimestepEmbedder`: sinusoidal ``[cos, sin]`` embedding of ``scale * t * freqs`` then
  Linear-SiLU-Linear.
- :class:`RMSNorm` and :class:`AdaptiveRMSNorm` (``W * RMSNorm(x) + B`` with ``[W, B]`` projected from a
  condition vector; the scale is *not* ``1 + W``).
- :func:`rope_table` / :func:`apply_rope`: rotary embedding over *interleaved* channel pairs
  ``(2i, 2i+1)`` (gpt-fast layout), table computed in float32.
- :class:`SelfAttention` (fused ``wqkv``, no biases, key-padding mask), :class:`SwiGLU`,
  :class:`DiTBlock` and :class:`DiTTransformer` (U-ViT skip stack, final adaptive norm).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from indextts2_jax.nn.layers import check_attention, dense

Dtype = Any


def find_multiple(n: int, k: int) -> int:
    """Smallest multiple of ``k`` that is >= ``n``."""
    return n if n % k == 0 else n + k - (n % k)


def swiglu_hidden_size(dim: int) -> int:
    """gpt-fast FeedForward width: ``find_multiple(int(2 * 4 * dim / 3), 256)`` (512 -> 1536)."""
    return find_multiple(int(2 * (4 * dim) / 3), 256)


def timestep_frequencies(frequency_embedding_size: int = 256, max_period: float = 10000.0) -> np.ndarray:
    """(half,) float32 ``exp(-ln(max_period) * i / half)``, the initial value of the ``freqs`` buffer."""
    half = frequency_embedding_size // 2
    return np.exp(-math.log(max_period) * np.arange(half, dtype=np.float64) / half).astype(np.float32)


class TimestepEmbedder(nn.Module):
    """t (B,) -> (B, hidden). ``emb = [cos(a), sin(a)]``, ``a = (scale * t) * freqs``, then Linear-SiLU-Linear.

    ``freqs`` is kept as a param (the checkpoint stores it as a buffer, and torch's float32 ``exp``
    differs from ours by an ulp in some entries, which ``scale * t`` = up to 1000 would amplify);
    it is wrapped in ``stop_gradient`` so training leaves it unchanged (exclude it from weight
    decay, as any 1-D param).
    """

    hidden: int
    frequency_embedding_size: int = 256
    scale: float = 1000.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, t: jax.Array) -> jax.Array:
        half = self.frequency_embedding_size // 2
        freqs = self.param(
            "freqs",
            nn.with_logical_partitioning(lambda *_: jnp.asarray(timestep_frequencies(self.frequency_embedding_size)),
                                         ("norm",)),
            (half,),
        )
        freqs = jax.lax.stop_gradient(jnp.asarray(freqs, jnp.float32))
        args = (self.scale * t.astype(jnp.float32))[:, None] * freqs[None, :]
        emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
        if self.frequency_embedding_size % 2:
            emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
        h = dense(self.hidden, ("embed", "mlp"), dtype=self.dtype, param_dtype=self.param_dtype, name="mlp_0")(emb)
        h = nn.silu(h)
        return dense(self.hidden, ("mlp", "embed"), dtype=self.dtype, param_dtype=self.param_dtype, name="mlp_2")(h)


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) in float32, cast back to x's dtype, times a learned gain ``weight``."""

    eps: float = 1e-5
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        weight = self.param("weight", nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
                            (x.shape[-1],), self.param_dtype)
        xf = x.astype(jnp.float32)
        normed = (xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)).astype(x.dtype)
        return normed * weight.astype(x.dtype)


class AdaptiveRMSNorm(nn.Module):
    """``W * RMSNorm(x) + B`` with ``[W, B] = split(project_layer(c))`` (scale first).

    x (B, T, D), c (B, 1, D) -> (B, T, D).
    """

    eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
        d = x.shape[-1]
        wb = dense(2 * d, ("embed", "mlp"), dtype=self.dtype, param_dtype=self.param_dtype, name="project_layer")(c)
        weight, bias = wb[..., :d], wb[..., d:]
        normed = RMSNorm(self.eps, self.param_dtype, name="norm")(x)
        return weight * normed + bias


def rope_table(length: int, head_dim: int, base: float = 10000.0) -> np.ndarray:
    """(length, head_dim // 2, 2) float32 [cos, sin] of ``pos / base^(2i / head_dim)`` for pos < length.

    The inverse frequencies are rounded to float32 first, as the official table (computed in float32).
    """
    inv = (1.0 / (np.float32(base) ** (np.arange(0, head_dim, 2, dtype=np.float32)[: head_dim // 2]
                                       / np.float32(head_dim)))).astype(np.float32)
    ang = np.arange(length, dtype=np.float64)[:, None] * inv.astype(np.float64)[None, :]
    ang = ang.astype(np.float32).astype(np.float64)
    return np.stack([np.cos(ang), np.sin(ang)], axis=-1).astype(np.float32)


def apply_rope(x: jax.Array, table: jax.Array) -> jax.Array:
    """Rotate interleaved channel pairs. x (B, T, H, Dh), table (T, Dh/2, 2) -> same shape/dtype as x."""
    b, t, h, d = x.shape
    xp = x.astype(jnp.float32).reshape(b, t, h, d // 2, 2)
    cos = table[None, :, None, :, 0]
    sin = table[None, :, None, :, 1]
    x0, x1 = xp[..., 0], xp[..., 1]
    out = jnp.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], axis=-1)
    return out.reshape(b, t, h, d).astype(x.dtype)


class SelfAttention(nn.Module):
    """Non-causal multi-head self-attention with RoPE and a key-padding mask.

    x (B, T, D), rope (T, Dh/2, 2), key_mask (B, T) bool (True = valid key) -> (B, T, D).
    Scores and softmax in float32; scale 1/sqrt(head_dim).

    ``attention`` (``nn.layers.ATTENTION_IMPLEMENTATIONS``): ``"einsum"`` (ours) or ``jax.nn.dot_product_attention``
    (``"xla"``, or ``"cudnn"``: flash attention on NVIDIA GPUs in bfloat16, no T x T buffers). The fused calls take
    the valid keys as a count per row, ``sum(key_mask)``: key_mask must then be a prefix mask (valid keys
    first), as the DiT's ``sequence_mask(x_lens)`` is.
    """

    num_heads: int
    head_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention: str = "einsum"

    @nn.compact
    def __call__(self, x: jax.Array, rope: jax.Array, key_mask: jax.Array) -> jax.Array:
        b, t, d = x.shape
        hd = self.num_heads * self.head_dim
        qkv = dense(3 * hd, ("embed", "heads"), use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                    name="wqkv")(x)
        q, k, v = (a.reshape(b, t, self.num_heads, self.head_dim) for a in jnp.split(qkv, 3, axis=-1))
        q = apply_rope(q, rope)
        k = apply_rope(k, rope)
        if self.attention != "einsum":
            lengths = jnp.sum(key_mask, axis=-1, dtype=jnp.int32)
            y = jax.nn.dot_product_attention(q.astype(self.dtype), k.astype(self.dtype), v.astype(self.dtype),
                                             key_value_seq_lengths=lengths, implementation=self.attention)
            return dense(d, ("heads", "embed"), use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                         name="wo")(y.reshape(b, t, hd))
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        scores = scores.astype(jnp.float32) / math.sqrt(self.head_dim)
        scores = jnp.where(key_mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        y = jnp.einsum("bhqk,bkhd->bqhd", probs, v.astype(self.dtype)).reshape(b, t, hd)
        return dense(d, ("heads", "embed"), use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                     name="wo")(y)


class SwiGLU(nn.Module):
    """``w2(silu(w1 x) * w3 x)``, no biases. (B, T, D) -> (B, T, D)."""

    hidden: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype)
        gate = dense(self.hidden, ("embed", "mlp"), name="w1", **kw)(x)
        up = dense(self.hidden, ("embed", "mlp"), name="w3", **kw)(x)
        return dense(x.shape[-1], ("mlp", "embed"), name="w2", **kw)(nn.silu(gate) * up)


class DiTBlock(nn.Module):
    """One pre-norm block with adaptive RMSNorms; optional U-ViT skip input merged first.

    x (B, T, D), c (B, 1, D), skip (B, T, D) or None -> (B, T, D).
    """

    dim: int
    num_heads: int
    head_dim: int
    ffn_hidden: int
    norm_eps: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention: str = "einsum"

    @nn.compact
    def __call__(self, x, c, rope, key_mask, skip=None):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if skip is not None:
            x = dense(self.dim, ("mlp", "embed"), name="skip_in_linear", **kw)(jnp.concatenate([x, skip], axis=-1))
        h = AdaptiveRMSNorm(self.norm_eps, name="attention_norm", **kw)(x, c)
        x = x + SelfAttention(self.num_heads, self.head_dim, name="attention", attention=self.attention, **kw)(
            h, rope, key_mask)
        h = AdaptiveRMSNorm(self.norm_eps, name="ffn_norm", **kw)(x, c)
        x = x + SwiGLU(self.ffn_hidden, name="feed_forward", **kw)(h)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class DiTTransformer(nn.Module):
    """Stack of :class:`DiTBlock` with U-ViT skips and a final adaptive RMSNorm.

    With ``uvit_skip_connection``, layers ``i < depth // 2`` push their outputs on a stack and layers
    ``i > depth // 2`` pop it (last in, first out) as their skip input. Only receiving layers own a
    ``skip_in_linear`` (the official blocks all carry one; the converter ignores the unused ones).

    x (B, T, D), c (B, 1, D), key_mask (B, T) bool -> (B, T, D).
    """

    depth: int
    dim: int
    num_heads: int
    head_dim: int
    ffn_hidden: int
    uvit_skip_connection: bool = True
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    attention: str = "einsum"  # SelfAttention's implementation

    @nn.compact
    def __call__(self, x, c, key_mask):
        check_attention(self.attention, self.dtype)
        rope = jnp.asarray(rope_table(x.shape[1], self.head_dim, self.rope_base))
        stack = []
        for i in range(self.depth):
            skip = stack.pop() if (self.uvit_skip_connection and i > self.depth // 2) else None
            x = DiTBlock(self.dim, self.num_heads, self.head_dim, self.ffn_hidden, self.norm_eps, self.dtype,
                         self.param_dtype, self.attention, name=f"layers_{i}")(x, c, rope, key_mask, skip)
            if self.uvit_skip_connection and i < self.depth // 2:
                stack.append(x)
        return AdaptiveRMSNorm(self.norm_eps, self.dtype, self.param_dtype, name="norm")(x, c)
