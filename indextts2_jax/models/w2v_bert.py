"""w2v-BERT 2.0 (HF ``Wav2Vec2BertModel``) encoder in Flax, and the IndexTTS2 feature normalisation.

IndexTTS2 reads ``hidden_states[17]`` of the 24-layer ``facebook/w2v-bert-2.0`` (the output of
encoder layer 16) and normalises it with per-channel statistics: ``(h - mean) / sqrt(var)``
(no epsilon). Layers 17-23 never influence that output, so :class:`W2VBert` takes ``num_layers``
and builds/runs only the first ``num_layers`` conformer layers (``num_layers=17`` for the
official model); :func:`from_torch` converts only those and, with ``ignore_unused_layers=True``,
accepts a full 24-layer checkpoint.

Structure (channels-last, B = batch, T = frames at 50 Hz, H = hidden size):

- feature projection: LayerNorm(160) -> Linear(160 -> H); frames where ``attention_mask == 0``
  are zeroed (that is ``hidden_states[0]``).
- conformer layer: ``x + 0.5*FFN1(LN(x))`` -> ``x + SelfAttn(LN(x))`` (relative_key positions)
  -> ``x + Conv(x)`` -> ``x + 0.5*FFN2(LN(x))`` -> LayerNorm.
- self-attention: ``softmax((q.k + q.E[clip(j - i, -left, right) + left]) / sqrt(d_head))``
  with a learned distance table ``E`` of ``left + right + 1`` rows; padded keys are masked.
- conv module: LN -> zero padded frames -> pointwise Linear(H -> 2H) -> GLU -> causal depthwise
  conv (kernel k, left pad k-1) -> LN -> swish -> pointwise Linear(H -> H).

Eval-mode only: SpecAugment (``masked_spec_embed``), dropout and layerdrop are training-time
features of the HF model and are not part of this port.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from indextts2_jax.convert.state_dict import StateDict, check_params_match, strip_prefix
from indextts2_jax.errors import CheckpointError, ConfigError
from indextts2_jax.nn.depthwise import DepthwiseConv1D
from indextts2_jax.nn.layers import dense, layer_norm

__all__ = [
    "W2VBertConfig",
    "W2VBert",
    "from_torch",
    "init_params",
    "load_w2v_stats",
    "normalize_hidden",
    "w2v_bert_embed",
]

_ACTIVATIONS = {
    "swish": jax.nn.silu,
    "silu": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
}

# HF Wav2Vec2BertConfig keys that matter for the eval-mode encoder.
_STRUCTURAL_KEYS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "feature_projection_input_dim",
    "hidden_act",
    "layer_norm_eps",
    "position_embeddings_type",
    "left_max_position_embeddings",
    "right_max_position_embeddings",
    "conv_depthwise_kernel_size",
    "add_adapter",
    "use_intermediate_ffn_before_adapter",
    "get_emb_hidden_index",
)


@dataclasses.dataclass(frozen=True)
class W2VBertConfig:
    """Dimensions of ``Wav2Vec2BertModel``; defaults are ``facebook/w2v-bert-2.0``.

    ``get_emb_hidden_index`` is the ``hidden_states`` index IndexTTS2 reads (17 for the real model:
    the output of layer 16). It is not an HF key; the fixtures carry it beside the HF kwargs.
    """

    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    feature_projection_input_dim: int = 160
    hidden_act: str = "swish"
    layer_norm_eps: float = 1e-5
    position_embeddings_type: str = "relative_key"
    left_max_position_embeddings: int = 64
    right_max_position_embeddings: int = 8
    conv_depthwise_kernel_size: int = 31
    add_adapter: bool = False
    use_intermediate_ffn_before_adapter: bool = False
    get_emb_hidden_index: int = 17

    def __post_init__(self):
        if self.position_embeddings_type != "relative_key":
            raise ConfigError(
                f"w2v-BERT position_embeddings_type={self.position_embeddings_type!r} is not supported "
                "(only 'relative_key', which w2v-bert-2.0 uses)"
            )
        if self.hidden_act not in _ACTIVATIONS:
            raise ConfigError(f"w2v-BERT hidden_act={self.hidden_act!r}; supported: {sorted(_ACTIVATIONS)}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        if not 0 <= self.get_emb_hidden_index <= self.num_hidden_layers:
            raise ConfigError(f"get_emb_hidden_index {self.get_emb_hidden_index} outside [0, {self.num_hidden_layers}]")

    @classmethod
    def from_official(cls, d: Mapping[str, Any]) -> "W2VBertConfig":
        """From HF ``Wav2Vec2BertConfig`` kwargs / ``config.json`` (plus optional ``get_emb_hidden_index``).

        Keys that only affect training (dropouts, SpecAugment, layerdrop), heads (CTC, xvector,
        codevectors) or bookkeeping (``architectures``, ``model_type`` ...) are ignored; the
        structural keys above are read and validated. Missing keys take the w2v-bert-2.0 values.
        """
        kwargs = {k: d[k] for k in _STRUCTURAL_KEYS if k in d}
        for k in ("add_adapter", "use_intermediate_ffn_before_adapter"):
            if k in kwargs:
                kwargs[k] = bool(kwargs[k])
        return cls(**kwargs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_distance_embeddings(self) -> int:
        return self.left_max_position_embeddings + self.right_max_position_embeddings + 1

    @property
    def layers_for_embedding(self) -> int:
        """Conformer layers needed for ``hidden_states[get_emb_hidden_index]`` (= that index)."""
        return self.get_emb_hidden_index


# --- building blocks ----------------------------------------------------------------------------


def _layer_norm(eps: float, name: str, param_dtype=jnp.float32):
    """LayerNorm computed in float32 with a two-pass variance (as torch)."""
    return layer_norm(name, param_dtype=param_dtype, eps=eps, fast_variance=False)


class FeedForward(nn.Module):
    """Linear(H -> I) -> act -> Linear(I -> H). (B, T, H) -> (B, T, H)."""

    config: W2VBertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = self.config
        h = dense(c.intermediate_size, ("embed", "mlp"),
                  name="intermediate_dense", dtype=self.dtype, param_dtype=self.param_dtype)(x)
        h = _ACTIVATIONS[c.hidden_act](h)
        return dense(c.hidden_size, ("mlp", "embed"),
                     name="output_dense", dtype=self.dtype, param_dtype=self.param_dtype)(h)


class RelativeKeySelfAttention(nn.Module):
    """Multi-head self-attention with HF ``relative_key`` distance embeddings.

    x: (B, T, H); key_mask: (B, T) bool (True = real frame) or None. Returns (B, T, H).
    """

    config: W2VBertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, key_mask=None):
        c = self.config
        b, t, _ = x.shape
        nh, dh = c.num_attention_heads, c.head_dim

        def proj(name):
            y = dense(c.hidden_size, ("embed", "heads"),
                      name=name, dtype=self.dtype, param_dtype=self.param_dtype)(x)
            return y.reshape(b, t, nh, dh)

        query, key, value = proj("linear_q"), proj("linear_k"), proj("linear_v")
        distance_table = nn.Embed(
            c.num_distance_embeddings,
            dh,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            embedding_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), (None, "kv")),
            name="distance_embedding",
        )
        # q . E[d] for every distance bucket d: (B, T, nh, P), then gathered per (query, key) pair.
        query_dot_distance = distance_table.attend(query)
        positions = jnp.arange(t)
        bucket = (
            jnp.clip(
                positions[None, :] - positions[:, None],
                -c.left_max_position_embeddings,
                c.right_max_position_embeddings,
            )
            + c.left_max_position_embeddings
        )  # (T_query, T_key)
        query_dot_distance = query_dot_distance.transpose(0, 2, 1, 3)  # (B, nh, T, P)
        # one (T, T) index grid shared by every batch row and head: (B, nh, T_query, T_key)
        relative_scores = query_dot_distance[:, :, positions[:, None], bucket]
        content_scores = jnp.einsum("bqhd,bkhd->bhqk", query, key)
        scale = 1.0 / math.sqrt(dh)
        scores = content_scores.astype(jnp.float32) * scale + relative_scores.astype(jnp.float32) * scale
        if key_mask is not None:
            scores = jnp.where(key_mask[:, None, None, :], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", probs, value).reshape(b, t, nh * dh)
        return dense(c.hidden_size, ("heads", "embed"),
                     name="linear_out", dtype=self.dtype, param_dtype=self.param_dtype)(out)


class ConvolutionModule(nn.Module):
    """LN -> zero padded frames -> Linear(H->2H) -> GLU -> causal depthwise conv -> LN -> act -> Linear.

    x: (B, T, H); frame_mask: (B, T) bool or None. Returns (B, T, H).
    """

    config: W2VBertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, frame_mask=None):
        c = self.config
        k = c.conv_depthwise_kernel_size
        h = _layer_norm(c.layer_norm_eps, "layer_norm", self.param_dtype)(x).astype(self.dtype)
        if frame_mask is not None:
            h = jnp.where(frame_mask[..., None], h, 0)
        h = dense(2 * c.hidden_size, ("embed", "mlp"), use_bias=False,
                  name="pointwise_conv1", dtype=self.dtype, param_dtype=self.param_dtype)(h)
        value, gate = jnp.split(h, 2, axis=-1)
        h = value * jax.nn.sigmoid(gate)
        h = DepthwiseConv1D(
            c.hidden_size,
            k,
            (k - 1, 0),
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("kernel", None, "embed")),
            name="depthwise_conv",
        )(h)
        h = _layer_norm(c.layer_norm_eps, "depthwise_layer_norm", self.param_dtype)(h).astype(self.dtype)
        h = _ACTIVATIONS[c.hidden_act](h)
        return dense(c.hidden_size, ("mlp", "embed"), use_bias=False,
                     name="pointwise_conv2", dtype=self.dtype, param_dtype=self.param_dtype)(h)


class ConformerLayer(nn.Module):
    """One ``Wav2Vec2BertEncoderLayer``. x: (B, T, H), mask: (B, T) bool or None -> (B, T, H)."""

    config: W2VBertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None):
        c = self.config
        eps, dt, pdt = c.layer_norm_eps, self.dtype, self.param_dtype

        def ln(name, y):
            return _layer_norm(eps, name, pdt)(y).astype(dt)

        x = x + 0.5 * FeedForward(c, dt, pdt, name="ffn1")(ln("ffn1_layer_norm", x))
        x = x + RelativeKeySelfAttention(c, dt, pdt, name="self_attn")(ln("self_attn_layer_norm", x), mask)
        x = x + ConvolutionModule(c, dt, pdt, name="conv_module")(x, mask)
        x = x + 0.5 * FeedForward(c, dt, pdt, name="ffn2")(ln("ffn2_layer_norm", x))
        x = ln("final_layer_norm", x)
        return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class FeatureProjection(nn.Module):
    """LayerNorm(F) -> Linear(F -> H). (B, T, F) -> (B, T, H)."""

    config: W2VBertConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features):
        c = self.config
        h = _layer_norm(c.layer_norm_eps, "layer_norm", self.param_dtype)(features).astype(self.dtype)
        return dense(c.hidden_size, (None, "embed"),
                     name="projection", dtype=self.dtype, param_dtype=self.param_dtype)(h)


class Encoder(nn.Module):
    """The conformer stack; holds ``layers_0 .. layers_{num_layers-1}``."""

    config: W2VBertConfig
    num_layers: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask=None, return_all: bool = True):
        hidden_states = [x]
        for i in range(self.num_layers):
            x = ConformerLayer(self.config, self.dtype, self.param_dtype, name=f"layers_{i}")(x, mask)
            if return_all:
                hidden_states.append(x)
        return tuple(hidden_states) if return_all else x


class W2VBert(nn.Module):
    """``Wav2Vec2BertModel`` in eval mode, running only its first ``num_layers`` conformer layers.

    Attributes:
      num_layers: layers to build and run (None = ``config.num_hidden_layers``). ``hidden_states[i]``
        needs ``num_layers >= i``; IndexTTS2 needs ``config.layers_for_embedding`` (17).

    Call: ``input_features`` (B, T, F=160) float, ``attention_mask`` (B, T) int/bool or None.
    Returns, with ``return_all=True``, the tuple of ``num_layers + 1`` hidden states, each (B, T, H):
    ``[0]`` the feature projection with padded frames zeroed, ``[i]`` the output of layer ``i-1``.
    With ``return_all=False`` only the last one (B, T, H), which lets XLA free the others.
    """

    config: W2VBertConfig
    num_layers: int | None = None
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @property
    def layers_to_run(self) -> int:
        n = self.config.num_hidden_layers if self.num_layers is None else self.num_layers
        if not 0 <= n <= self.config.num_hidden_layers:
            raise ConfigError(f"num_layers {n} outside [0, {self.config.num_hidden_layers}]")
        return n

    @nn.compact
    def __call__(self, input_features, attention_mask=None, return_all: bool = True):
        x = FeatureProjection(self.config, self.dtype, self.param_dtype, name="feature_projection")(
            input_features.astype(self.dtype)
        )
        mask = None
        if attention_mask is not None:
            mask = attention_mask.astype(bool)
            x = jnp.where(mask[..., None], x, 0)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        return Encoder(self.config, self.layers_to_run, self.dtype, self.param_dtype, name="encoder")(
            x, mask, return_all
        )


# --- feature normalisation (IndexTTS2.get_emb) -------------------------------------------------


def normalize_hidden(hidden, mean, var):
    """``(hidden - mean) / sqrt(var)`` in float32 (no epsilon, as infer_v2). hidden (..., H); mean/var (H,)."""
    hidden = jnp.asarray(hidden, jnp.float32)
    return (hidden - jnp.asarray(mean, jnp.float32)) / jnp.sqrt(jnp.asarray(var, jnp.float32))


def load_w2v_stats(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Load the w2v-BERT normalisation stats; returns ``(mean, var)``, each float32 (H,).

    ``.pt``/``.pth``: the official ``wav2vec2bert_stats.pt`` dict ``{'mean', 'var'}`` (needs torch).
    ``.npz``: arrays ``mean`` and ``var``. ``.npy``: a (2, H) array ``[mean, var]``.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"w2v-BERT stats file not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    if ext in (".pt", ".pth", ".bin"):
        from indextts2_jax.convert.state_dict import load_torch_checkpoint

        obj = load_torch_checkpoint(path)
        if not isinstance(obj, Mapping) or "mean" not in obj or "var" not in obj:
            raise CheckpointError(f"{path}: expected a dict with 'mean' and 'var'")
        mean, var = StateDict(obj).take("mean"), StateDict(obj).take("var")
    elif ext == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if "mean" not in z.files or "var" not in z.files:
                raise CheckpointError(f"{path}: expected arrays 'mean' and 'var', found {z.files}")
            mean, var = z["mean"], z["var"]
    elif ext == ".npy":
        arr = np.load(path, allow_pickle=False)
        if arr.ndim != 2 or arr.shape[0] != 2:
            raise CheckpointError(f"{path}: expected a (2, H) array [mean, var], got shape {arr.shape}")
        mean, var = arr[0], arr[1]
    else:
        raise CheckpointError(f"{path}: unknown stats format {ext!r} (use .pt, .npz or .npy)")
    mean = np.asarray(mean, np.float32).reshape(-1)
    var = np.asarray(var, np.float32).reshape(-1)
    if mean.shape != var.shape:
        raise CheckpointError(f"{path}: mean {mean.shape} and var {var.shape} differ in shape")
    if np.any(var <= 0):
        raise CheckpointError(f"{path}: var has non-positive entries")
    return mean, var


def w2v_bert_embed(
    params,
    input_features,
    attention_mask,
    mean,
    var,
    config: W2VBertConfig,
    dtype=jnp.float32,
):
    """IndexTTS2's ``get_emb``: ``normalize(hidden_states[config.get_emb_hidden_index])``.

    input_features (B, T, 160), attention_mask (B, T) or None, mean/var (H,) -> (B, T, H) float32.
    Runs only the layers that index needs; jitted (one compile per input shape and dtype).
    """
    return _embed_jit(params, input_features, attention_mask, mean, var, config, jnp.dtype(dtype).name)


@functools.partial(jax.jit, static_argnums=(5, 6))
def _embed_jit(params, input_features, attention_mask, mean, var, config, dtype_name):
    model = W2VBert(config, num_layers=config.layers_for_embedding, dtype=jnp.dtype(dtype_name))
    hidden = model.apply({"params": params}, input_features, attention_mask, return_all=False)
    return normalize_hidden(hidden, mean, var)


# --- params -----------------------------------------------------------------------------------


def init_params(config: W2VBertConfig, key, num_layers: int | None = None, param_dtype=jnp.float32):
    """Random params (plain arrays) for ``W2VBert(config, num_layers)``."""
    model = W2VBert(config, num_layers=num_layers, param_dtype=param_dtype)
    x = jnp.zeros((1, 4, config.feature_projection_input_dim), jnp.float32)
    return nn.unbox(jax.jit(model.init)(key, x))["params"]


def _abstract_params(config: W2VBertConfig, num_layers: int):
    model = W2VBert(config, num_layers=num_layers)
    x = jax.ShapeDtypeStruct((1, 4, config.feature_projection_input_dim), jnp.float32)
    return nn.unbox(jax.eval_shape(model.init, jax.random.key(0), x))["params"]


def _convert_layer(sd: StateDict, c: W2VBertConfig) -> dict:
    def ffn(s):
        return {
            "intermediate_dense": s.sub("intermediate_dense").linear(bias=True),
            "output_dense": s.sub("output_dense").linear(bias=True),
        }

    attn = sd.sub("self_attn")
    conv = sd.sub("conv_module")
    return {
        "ffn1_layer_norm": sd.sub("ffn1_layer_norm").layer_norm(),
        "ffn1": ffn(sd.sub("ffn1")),
        "self_attn_layer_norm": sd.sub("self_attn_layer_norm").layer_norm(),
        "self_attn": {
            **{n: attn.sub(n).linear(bias=True) for n in ("linear_q", "linear_k", "linear_v", "linear_out")},
            "distance_embedding": attn.sub("distance_embedding").embedding(),
        },
        "conv_module": {
            "layer_norm": conv.sub("layer_norm").layer_norm(),
            "pointwise_conv1": conv.sub("pointwise_conv1").conv1d_as_dense(bias=False),
            "depthwise_conv": conv.sub("depthwise_conv").conv1d(bias=False),
            "depthwise_layer_norm": conv.sub("depthwise_layer_norm").layer_norm(),
            "pointwise_conv2": conv.sub("pointwise_conv2").conv1d_as_dense(bias=False),
        },
        "ffn2_layer_norm": sd.sub("ffn2_layer_norm").layer_norm(),
        "ffn2": ffn(sd.sub("ffn2")),
        "final_layer_norm": sd.sub("final_layer_norm").layer_norm(),
    }


def from_torch(
    state_dict: Mapping[str, Any],
    config: W2VBertConfig,
    num_layers: int | None = None,
    ignore_unused_layers: bool = False,
) -> dict:
    """HF ``Wav2Vec2BertModel`` state dict (e.g. ``facebook/w2v-bert-2.0`` model.safetensors) -> params.

    Args:
      state_dict: key -> array/tensor; a ``wav2vec2_bert.`` prefix (task-head models) is stripped.
      num_layers: conformer layers to convert (None = ``config.num_hidden_layers``). Use
        ``config.layers_for_embedding`` (17) for IndexTTS2.
      ignore_unused_layers: the checkpoint's layers ``>= num_layers`` are skipped on purpose.
        Without this flag they make the conversion fail, so dropping layers is never silent.

    Ignored on purpose: ``masked_spec_embed`` (SpecAugment, training only); ``adapter.*`` and
    ``intermediate_ffn.*`` when the config enables them (they transform only ``last_hidden_state``,
    which IndexTTS2 does not read; this port does not implement them).
    Returns the params for ``W2VBert(config, num_layers)``.
    """
    c = config
    n = c.num_hidden_layers if num_layers is None else int(num_layers)
    if not 0 <= n <= c.num_hidden_layers:
        raise ConfigError(f"num_layers {n} outside [0, {c.num_hidden_layers}]")
    tensors = dict(state_dict)
    if tensors and all(k.startswith("wav2vec2_bert.") for k in tensors):
        tensors = strip_prefix(tensors, ("wav2vec2_bert.",))
    sd = StateDict(tensors)

    present = sorted({int(m.group(1)) for k in tensors if (m := re.match(r"encoder\.layers\.(\d+)\.", k))})
    extra = [i for i in present if i >= n]
    if extra:
        if not ignore_unused_layers:
            raise CheckpointError(
                f"checkpoint has encoder layers {extra[0]}..{extra[-1]} beyond the {n} requested; pass "
                "ignore_unused_layers=True to drop them (IndexTTS2 needs only layers 0.."
                f"{c.layers_for_embedding - 1})"
            )
        sd.ignore(r"encoder\.layers\.(" + "|".join(str(i) for i in extra) + r")\.")
    sd.ignore(r"masked_spec_embed$")  # SpecAugment mask vector: used only when training with masking
    if c.add_adapter:
        sd.ignore(r"adapter\.")  # acts on last_hidden_state only; not implemented (IndexTTS2 reads layer 17)
    if c.use_intermediate_ffn_before_adapter:
        sd.ignore(r"intermediate_ffn\.")  # same: only before the adapter, not implemented

    fp = sd.sub("feature_projection")
    params = {
        "feature_projection": {
            "layer_norm": fp.sub("layer_norm").layer_norm(),
            "projection": fp.sub("projection").linear(bias=True),
        },
        "encoder": {f"layers_{i}": _convert_layer(sd.sub("encoder").sub("layers").sub(i), c) for i in range(n)},
    }
    sd.finish()
    check_params_match(params, _abstract_params(c, n), "w2v-BERT params")
    return jax.tree.map(lambda a: np.asarray(a, np.float32), params)
