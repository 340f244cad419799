"""GPT-2 blocks (HF ``GPT2Model`` numerics) with an optional preallocated KV cache (reference §5.5).

Pre-LN blocks: ``x += c_proj(attn(ln_1 x)); x += c_proj(gelu_new(c_fc(ln_2 x)))``, then ``ln_f``.
LayerNorm eps 1e-5, attention scale 1/sqrt(head_dim), ``gelu_new`` = tanh-approximate GELU.
There are no token or position tables here (UnifiedVoice removes ``wte`` and zeroes ``wpe``): the
caller passes input embeddings.

Attention masks are boolean, broadcastable to (B, 1, S, K) with True = may attend; K = S without a
cache, K = the cache length with one. Masked scores get ``finfo(float32).min`` (as HF), so a query
row with every key masked (a left-padding row) softmaxes to a uniform row instead of NaN. ``mask=None``
(no cache) means plain causal attention, the training forward's: it is what ``attention`` applies to.

Two training options (``GPT2Transformer``; both leave the numbers as they are, within float rounding):
``attention`` picks how the causal forward attends: ``"einsum"`` (ours: scores, softmax, weighted sum as
separate ops; the S x S scores are kept for the backward pass), or ``jax.nn.dot_product_attention`` with
``implementation="xla"`` or ``"cudnn"`` (fused flash attention on NVIDIA GPUs, bfloat16/float16 only: no
S x S buffer in the forward or the backward). ``remat`` rematerialises each block in the backward pass:
``"none"``, ``"dots"`` (matmul outputs without batch dims are kept, the rest recomputed: the attention
scores and the elementwise ops) or ``"full"`` (only the block inputs are kept).

KV cache: a list (one entry per layer) of ``{"k": (B, H, T_max, hd), "v": (B, H, T_max, hd)}``; a
call with ``cache_index`` writes its S new keys/values at ``[cache_index, cache_index + S)``. A one-token
call (decode) attends over the whole buffer it is given (the mask hides unwritten slots; the decoder grows
the buffer in stages, ``infer/generate.py``); a multi-token call is a
prefill at ``cache_index`` 0 and attends over its own S keys only (``mask[..., :S]``).

Beam search keeps its cache rows where they were written: a one-token call may take ``ancestry`` (G, K, T)
int32 for a cache of G x K rows (G batch rows of K beams each): the beam now in row k of group g finds its
key/value of slot t in row ``ancestry[g, k, t]`` of its group (see ``GPT2Attention._beam_decode_attention``),
so choosing new beams moves a small index table instead of the cache.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from indextts2_jax.nn.layers import check_attention, dense, layer_norm

REMAT_POLICIES = {"none": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
                  "full": jax.checkpoint_policies.nothing_saveable}


def check_training_options(attention: str, remat: str, dtype=None) -> None:
    """Raise ValueError for an unknown ``attention``/``remat`` name, or cuDNN attention in float32."""
    check_attention(attention, dtype)
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat={remat!r}: expected one of {tuple(REMAT_POLICIES)}")


def init_kv_cache(batch: int, length: int, layers: int, heads: int, head_dim: int, dtype=jnp.float32) -> list[dict]:
    """Zeroed KV cache: ``layers`` x {"k", "v"} of shape (batch, heads, length, head_dim)."""
    shape = (batch, heads, length, head_dim)
    return [{"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(layers)]


def causal_mask(length: int) -> jax.Array:
    """(1, 1, S, S) lower-triangular boolean mask."""
    return jnp.tril(jnp.ones((length, length), dtype=bool))[None, None]


def _softmax_with_new_key(scores_old, mask, cache_index, q, k_new, scale):
    """A decode step's attention weights: scores_old (B, H, 1, T) over the cache before this step's write
    (masked by ``mask`` (B|1, 1, 1, T), slot ``cache_index`` excluded) and this step's own key k_new
    (B, H, 1, hd), normalized together -> (p_old (B, H, 1, T), p_new (B, H, 1, 1)), float32."""
    slots = jnp.arange(scores_old.shape[-1])
    old_mask = mask & (slots != cache_index)[None, None, None, :]
    scores_old = jnp.where(old_mask, scores_old, jnp.finfo(jnp.float32).min)
    score_new = jnp.sum((q * k_new).astype(jnp.float32), axis=-1, keepdims=True) * scale
    top = jnp.maximum(jnp.max(scores_old, axis=-1, keepdims=True), score_new)
    p_old = jnp.exp(scores_old - top)
    p_new = jnp.exp(score_new - top)
    denom = jnp.sum(p_old, axis=-1, keepdims=True) + p_new
    return p_old / denom, p_new / denom


class GPT2Attention(nn.Module):
    """Multi-head causal self-attention with HF ``Conv1D`` projections (``c_attn``, ``c_proj``)."""

    model_dim: int
    heads: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    attention: str = "einsum"  # the causal forward (mask None): "einsum" | "xla" | "cudnn" (module docstring)

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None, cache: dict | None = None, cache_index=None,
                 ancestry: jax.Array | None = None):
        """x (B, S, D), mask (B|1, 1, S, K) bool or None (causal, no cache), ancestry (G, K, T) int32 or None
        (one-token beam steps) -> ((B, S, D), new cache or None)."""
        b, s, d = x.shape
        hd = d // self.heads
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        qkv = dense(3 * d, ("embed", "mlp"), name="c_attn", **kw)(x)
        q, k, v = (t.reshape(b, s, self.heads, hd) for t in jnp.split(qkv, 3, axis=-1))
        if mask is None:
            if cache is not None:
                raise ValueError("mask=None (causal) is for calls without a KV cache")
            if self.attention != "einsum":
                out = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=self.attention)
                return dense(d, ("mlp", "embed"), name="c_proj", **kw)(out.reshape(b, s, d)), None
            mask = causal_mask(s)
        # heads-major (B, H, S, hd): the cache and both attention matmuls keep batch dims leading, so a
        # decode step reads the cache in place (no per-step relayout of the whole cache)
        q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))
        new_cache = None
        if cache is not None:
            start = (0, 0, cache_index, 0)
            if s == 1:
                if ancestry is None:
                    out = self._decode_attention(q, k, v, cache, mask, cache_index, hd)
                else:
                    out = self._beam_decode_attention(q, k, v, cache, mask, cache_index, hd, ancestry)
                # The cache write must follow the cache reads above. XLA's copy insertion only sees data
                # dependences: without one it copies each loop-carried cache buffer (twice) every step.
                # ``0 * sum(out)`` (exactly 0 for finite attention) makes the written values depend on the
                # reads, and the cache is then updated in place (~25% of a decode step at 500 codes).
                dep = (0.0 * jnp.sum(out)).astype(k.dtype)
                new_cache = {"k": lax.dynamic_update_slice(cache["k"], (k + dep).astype(cache["k"].dtype), start),
                             "v": lax.dynamic_update_slice(cache["v"], (v + dep).astype(cache["v"].dtype), start)}
                return dense(d, ("mlp", "embed"), name="c_proj", **kw)(out), new_cache
            if ancestry is not None:
                raise ValueError("ancestry is for one-token (decode) calls")
            k_all = lax.dynamic_update_slice(cache["k"], k.astype(cache["k"].dtype), start)
            v_all = lax.dynamic_update_slice(cache["v"], v.astype(cache["v"].dtype), start)
            new_cache = {"k": k_all, "v": v_all}
            # prefill (cache_index 0): the S new keys are all there is, skip the empty slots
            mask = mask[..., :s]
        scores = jnp.einsum("bhqd,bhkd->bhqk", q, k.astype(q.dtype)).astype(jnp.float32) / math.sqrt(hd)
        scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bhkd->bhqd", probs, v.astype(self.dtype)).transpose(0, 2, 1, 3).reshape(b, s, d)
        return dense(d, ("mlp", "embed"), name="c_proj", **kw)(out), new_cache

    def _decode_attention(self, q, k_new, v_new, cache, mask, cache_index, hd):
        """One decode step: attend over the cache *before* this step's write, plus this step's key.

        q/k_new/v_new (B, H, 1, hd), cache {"k", "v"} (B, H, T, hd), mask (B|1, 1, 1, T) -> (B, 1, H*hd).
        Equal to attending over the updated cache (slot ``cache_index`` holds k_new/v_new), but the
        old cache is only read and the updated one only written, so XLA can update the loop-carried
        cache in place instead of copying the whole cache several times per step.
        """
        b, h, _, _ = q.shape
        d = h * hd
        k_old = cache["k"].astype(q.dtype)
        v_old = cache["v"].astype(q.dtype)
        scale = 1.0 / math.sqrt(hd)
        scores_old = jnp.einsum("bhqd,bhkd->bhqk", q, k_old).astype(jnp.float32) * scale
        p_old, p_new = _softmax_with_new_key(scores_old, mask, cache_index, q, k_new, scale)
        out = jnp.einsum("bhqk,bhkd->bhqd", p_old.astype(self.dtype), v_old)
        out = out + p_new.astype(self.dtype) * v_new
        return out.transpose(0, 2, 1, 3).reshape(b, 1, d)

    def _beam_decode_attention(self, q, k_new, v_new, cache, mask, cache_index, hd, ancestry):
        """One beam-search decode step over a cache whose rows were never reordered.

        q/k_new/v_new (G*K, H, 1, hd), cache {"k", "v"} (G*K, H, T, hd), mask (G*K|1, 1, 1, T), ancestry
        (G, K, T) int32 in [0, K) -> (G*K, 1, H*hd). Query row k of group g attends, at slot t, to the key and
        value in cache row ``ancestry[g, k, t]`` of the group (plus this step's own k_new/v_new at
        ``cache_index``), i.e. as if the cache had been gathered by ancestry, without moving it.

        How: each cache row is read once, against all K queries of its group (a K-row product instead of a
        one-row one; stacked so that row a's j-th query is query (a - j) mod K), and each query then picks,
        per slot, the score from the row its ancestry names. The values mirror it: each cache row's K
        weight rows carry a query's probabilities where that query's ancestry names the row, zero elsewhere.
        """
        bk, h, _, _ = q.shape
        g, kb, t = ancestry.shape
        k_old = cache["k"].astype(q.dtype)
        v_old = cache["v"].astype(q.dtype)
        scale = 1.0 / math.sqrt(hd)
        # stacked[g, a, :, j] = query (a - j) % K of group g: the query that cache row a serves in column j
        shift = (np.arange(kb)[:, None] - np.arange(kb)[None, :]) % kb  # (a, j)
        qg = q.reshape(g, kb, h, hd)
        stacked = qg[:, shift].transpose(0, 1, 3, 2, 4).reshape(bk, h, kb, hd)
        s_all = jnp.einsum("bhjd,bhtd->bhjt", stacked, k_old).astype(jnp.float32) * scale
        s_all = s_all.reshape(g, kb, h, kb, t)  # (G, row a, H, column j, T)
        owner = [ancestry[:, i, None, :] for i in range(kb)]  # per query i: (G, 1, T)
        rows = []
        for i in range(kb):
            score = s_all[:, 0, :, (0 - i) % kb]
            for a in range(1, kb):
                score = jnp.where(owner[i] == a, s_all[:, a, :, (a - i) % kb], score)
            rows.append(score)
        scores_old = jnp.stack(rows, axis=1).reshape(bk, h, 1, t)
        p_old, p_new = _softmax_with_new_key(scores_old, mask, cache_index, q, k_new, scale)
        p_old = p_old.reshape(g, kb, h, t)
        zero = jnp.zeros((), p_old.dtype)
        weights = jnp.stack([jnp.stack([jnp.where(owner[(a - j) % kb] == a, p_old[:, (a - j) % kb], zero)
                                        for j in range(kb)], axis=2) for a in range(kb)], axis=1)  # (G, a, H, j, T)
        out_all = jnp.einsum("bhjt,bhtd->bhjd", weights.reshape(bk, h, kb, t).astype(self.dtype), v_old)
        out_all = out_all.reshape(g, kb, h, kb, hd)
        out = jnp.stack([sum(out_all[:, a, :, (a - i) % kb] for a in range(kb)) for i in range(kb)], axis=1)
        out = out.reshape(bk, h, 1, hd) + p_new.astype(self.dtype) * v_new
        return out.transpose(0, 2, 1, 3).reshape(bk, 1, h * hd)


class GPT2MLP(nn.Module):
    model_dim: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = dense(4 * self.model_dim, ("embed", "mlp"), name="c_fc", **kw)(x)
        h = jax.nn.gelu(h, approximate=True)  # gelu_new
        return dense(self.model_dim, ("mlp", "embed"), name="c_proj", **kw)(h)


class GPT2Block(nn.Module):
    model_dim: int
    heads: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    attention: str = "einsum"

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None, cache: dict | None = None, cache_index=None,
                 ancestry: jax.Array | None = None):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = layer_norm("ln_1", param_dtype=self.param_dtype)(x).astype(self.dtype)
        h, new_cache = GPT2Attention(self.model_dim, self.heads, name="attn", attention=self.attention, **kw)(
            h, mask, cache, cache_index, ancestry)
        x = x + h
        h = layer_norm("ln_2", param_dtype=self.param_dtype)(x).astype(self.dtype)
        x = x + GPT2MLP(self.model_dim, name="mlp", **kw)(h)
        return nn.with_logical_constraint(x, ("batch", "length", "embed")), new_cache


class GPT2Transformer(nn.Module):
    """``layers`` GPT-2 blocks (``h_0`` ...) and ``ln_f``; input embeddings in, hidden states out."""

    model_dim: int
    layers: int
    heads: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    attention: str = "einsum"  # the causal forward's attention (mask None); module docstring
    remat: str = "none"  # "none" | "dots" | "full": blocks rematerialised in the backward (calls without a cache)

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None, caches: list[dict] | None = None, cache_index=None,
                 ancestry: jax.Array | None = None):
        """x (B, S, D), mask (B|1, 1, S, K) or None (causal, no cache), ancestry (G, K, T) or None (beam
        decode steps) -> (ln_f(h) (B, S, D), new caches or None)."""
        check_training_options(self.attention, self.remat, self.dtype)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype, attention=self.attention)
        x = x.astype(self.dtype)
        new_caches = [] if caches is not None else None
        block = GPT2Block
        if self.remat != "none" and caches is None:  # same param paths (h_i) with or without it
            block = nn.remat(GPT2Block, policy=REMAT_POLICIES[self.remat])
        for i in range(self.layers):
            cache = caches[i] if caches is not None else None
            x, c = block(self.model_dim, self.heads, name=f"h_{i}", **kw)(x, mask, cache, cache_index, ancestry)
            if caches is not None:
                new_caches.append(c)
        x = layer_norm("ln_f", param_dtype=self.param_dtype)(x).astype(self.dtype)
        return x, new_caches
