"""CAM++ (CAMPPlus) speaker encoder in Flax (channels-last) and the official checkpoint converter.

IndexTTS2 uses it as the S2M "style" encoder: Kaldi fbank of the 16 kHz prompt (minus its time mean),
(B, T, 80) -> (B, 192) embedding.

Structure (3D-Speaker ``CAMPPlus``):
  FCM head: 2-D convs over (frequency, time) with stride 2 on the frequency axis only
            (conv3x3 + BN + ReLU, 2 x 2 BasicResBlocks, conv3x3 stride (2,1) + BN + ReLU), then the
            (32 channels x F/8 bins) map is flattened channel-major to 32*F/8 features per frame.
  TDNN:     Conv1d k5 stride 2 pad 2 (no bias) + BN + ReLU.
  3 x (CAM-dense block + transit layer); dense layer = BN+ReLU, 1x1 conv, BN+ReLU, CAM layer, concatenated;
            CAM layer = local dilated conv gated by sigmoid(MLP(mean_t + 100-frame segment mean)).
  BN+ReLU, statistics pooling [mean, unbiased std], 1x1 conv (no bias) + BatchNorm without affine.

BatchNorm (eps 1e-5) runs from its running statistics (collection ``batch_stats``) unless ``train=True``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from indextts2_jax.convert.state_dict import StateDict, check_params_match
from indextts2_jax.errors import ConfigError

Array = jnp.ndarray

# Fixed by the official code (not constructor arguments).
FCM_CHANNELS = 32
BLOCK_LAYERS = (12, 24, 16)
BLOCK_DILATIONS = (1, 2, 2)
BLOCK_KERNEL = 3
SEGMENT_FRAMES = 100
BN_EPS = 1e-5


@dataclass(frozen=True)
class CAMPPlusConfig:
    """CAMPPlus hyperparameters; defaults = IndexTTS2's ``CAMPPlus(feat_dim=80, embedding_size=192)``."""

    feat_dim: int = 80
    embedding_size: int = 192
    growth_rate: int = 32
    bn_size: int = 4
    init_channels: int = 128
    config_str: str = "batchnorm-relu"
    memory_efficient: bool = True

    def __post_init__(self):
        if self.config_str != "batchnorm-relu":
            raise ConfigError(f"CAMPPlus config_str {self.config_str!r} is not supported (only 'batchnorm-relu')")
        if self.feat_dim % 8:
            raise ConfigError(f"CAMPPlus feat_dim must be divisible by 8, got {self.feat_dim}")

    @property
    def head_channels(self) -> int:
        """Features per frame after the FCM head (32 * feat_dim / 8)."""
        return FCM_CHANNELS * (self.feat_dim // 8)

    def block_channels(self) -> list[tuple[int, int]]:
        """(channels into block i, channels after its transit layer) for the 3 blocks."""
        out, channels = [], self.init_channels
        for n_layers in BLOCK_LAYERS:
            grown = channels + n_layers * self.growth_rate
            out.append((channels, grown // 2))
            channels = grown // 2
        return out

    @classmethod
    def from_official(cls, kwargs: Mapping[str, Any]) -> CAMPPlusConfig:
        """From the official constructor kwargs (``CAMPPlus(**kwargs)``); unknown keys raise ConfigError."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - fields)
        if unknown:
            raise ConfigError(f"unknown CAMPPlus config keys: {unknown}")
        return cls(**dict(kwargs))


def _bn(train: bool, affine: bool = True, name: str = "batchnorm") -> nn.BatchNorm:
    """BatchNorm over the last axis, torch semantics (eps 1e-5, momentum 0.1), computed in float32."""
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=BN_EPS,
        use_scale=affine,
        use_bias=affine,
        dtype=jnp.float32,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("norm",)),
        name=name,
    )


def _kaiming(names):
    return nn.with_logical_partitioning(nn.initializers.variance_scaling(2.0, "fan_in", "normal"), names)


class _Conv2d(nn.Module):
    """3x3 (or 1x1) conv over (B, F, T, C) with stride (s, 1): frequency is strided, time is not. No bias."""

    features: int
    kernel: int = 3
    freq_stride: int = 1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        pad = self.kernel // 2
        return nn.Conv(
            self.features,
            (self.kernel, self.kernel),
            strides=(self.freq_stride, 1),
            padding=((pad, pad), (pad, pad)),
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=_kaiming(("kernel", None, "conv_in", "conv_out")),
            name="conv",
        )(x)


class BasicResBlock(nn.Module):
    """ResNet basic block on (B, F, T, C); stride on the frequency axis; 1x1 conv+BN shortcut when needed."""

    planes: int
    freq_stride: int = 1
    train: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        out = _Conv2d(self.planes, 3, self.freq_stride, name="conv1", **kw)(x)
        out = nn.relu(_bn(self.train, name="bn1")(out).astype(self.dtype))
        out = _Conv2d(self.planes, 3, 1, name="conv2", **kw)(out)
        out = _bn(self.train, name="bn2")(out).astype(self.dtype)
        if self.freq_stride != 1 or x.shape[-1] != self.planes:
            x = _Conv2d(self.planes, 1, self.freq_stride, name="shortcut_conv", **kw)(x)
            x = _bn(self.train, name="shortcut_bn")(x).astype(self.dtype)
        return nn.relu(out + x)


class FCM(nn.Module):
    """Front-end 2-D conv module: fbank (B, T, F) -> (B, T', 32 * F/8) with T' = T (channel-major flatten)."""

    train: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, fbank: Array) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = jnp.swapaxes(fbank, 1, 2)[..., None].astype(self.dtype)  # (B, F, T, 1): torch's (H=F, W=T)
        x = nn.relu(_bn(self.train, name="bn1")(_Conv2d(FCM_CHANNELS, 3, 1, name="conv1", **kw)(x)).astype(self.dtype))
        for layer in (1, 2):
            x = BasicResBlock(FCM_CHANNELS, 2, self.train, name=f"layer{layer}_0", **kw)(x)
            x = BasicResBlock(FCM_CHANNELS, 1, self.train, name=f"layer{layer}_1", **kw)(x)
        x = _Conv2d(FCM_CHANNELS, 3, 2, name="conv2", **kw)(x)
        x = nn.relu(_bn(self.train, name="bn2")(x).astype(self.dtype))  # (B, F/8, T, 32)
        b, f, t, c = x.shape
        return jnp.transpose(x, (0, 2, 3, 1)).reshape(b, t, c * f)  # feature index = c * F' + f


def _dense(features: int, use_bias: bool, name: str, dtype, param_dtype) -> nn.Dense:
    """A kernel-size-1 Conv1d as Dense (kernel (in, out))."""
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=_kaiming(("conv_in", "conv_out")),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("conv_out",)),
        name=name,
    )


def segment_mean(x: Array, segment: int = SEGMENT_FRAMES) -> Array:
    """Mean over consecutive ``segment``-frame chunks, broadcast back to every frame; (B, T, C) -> (B, T, C).

    The last, partial chunk is averaged over its true length (torch ``avg_pool1d(ceil_mode=True)``).
    """
    b, t, c = x.shape
    n_seg = -(-t // segment)
    padded = jnp.pad(x, ((0, 0), (0, n_seg * segment - t), (0, 0)))
    sums = padded.reshape(b, n_seg, segment, c).sum(axis=2)
    counts = np.minimum(segment, t - segment * np.arange(n_seg)).astype(np.float32)
    means = sums / jnp.asarray(counts, x.dtype)[None, :, None]
    return jnp.repeat(means, segment, axis=1)[:, :t]


class CAMLayer(nn.Module):
    """Context-aware masking: local dilated conv (no bias) gated by an MLP of global + segment context."""

    out_channels: int
    kernel_size: int
    dilation: int
    reduction: int = 2
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        pad = (self.kernel_size - 1) // 2 * self.dilation
        local = nn.Conv(
            self.out_channels,
            (self.kernel_size,),
            padding=[(pad, pad)],
            kernel_dilation=(self.dilation,),
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=_kaiming(("kernel", "conv_in", "conv_out")),
            name="linear_local",
        )(x)
        context = jnp.mean(x, axis=1, keepdims=True) + segment_mean(x)
        hidden = nn.relu(_dense(x.shape[-1] // self.reduction, True, "linear1", self.dtype, self.param_dtype)(context))
        gate = nn.sigmoid(_dense(self.out_channels, True, "linear2", self.dtype, self.param_dtype)(hidden))
        return local * gate


class CAMDenseTDNNLayer(nn.Module):
    """BN+ReLU -> 1x1 conv (bottleneck) -> BN+ReLU -> CAM layer; (B, T, C_in) -> (B, T, growth)."""

    growth: int
    bottleneck: int
    kernel_size: int
    dilation: int
    train: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = nn.relu(_bn(self.train, name="nonlinear1")(x).astype(self.dtype))
        h = _dense(self.bottleneck, False, "linear1", self.dtype, self.param_dtype)(h)
        h = nn.relu(_bn(self.train, name="nonlinear2")(h).astype(self.dtype))
        return CAMLayer(self.growth, self.kernel_size, self.dilation, dtype=self.dtype, param_dtype=self.param_dtype,
                        name="cam_layer")(h)


class CAMPPlus(nn.Module):
    """CAM++ speaker encoder: fbank (B, T, feat_dim) -> embedding (B, embedding_size).

    ``train=True`` uses batch statistics in BatchNorm (pass ``mutable=["batch_stats"]``); with
    ``config.memory_efficient`` the dense layers are then rematerialised in the backward pass.
    Intermediate activations are sown into the ``intermediates`` collection (channels-last).
    """

    config: CAMPPlusConfig = CAMPPlusConfig()
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, fbank: Array, train: bool = False) -> Array:
        cfg = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = FCM(train, name="head", **kw)(fbank)
        self.sow("intermediates", "inter_head", x)
        x = nn.Conv(
            cfg.init_channels,
            (5,),
            strides=(2,),
            padding=[(2, 2)],
            use_bias=False,
            kernel_init=_kaiming(("kernel", "conv_in", "conv_out")),
            name="tdnn_linear",
            **kw,
        )(x)
        x = nn.relu(_bn(train, name="tdnn_bn")(x).astype(self.dtype))
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        self.sow("intermediates", "inter_tdnn", x)
        layer_cls = nn.remat(CAMDenseTDNNLayer) if (train and cfg.memory_efficient) else CAMDenseTDNNLayer
        for i, (n_layers, dilation) in enumerate(zip(BLOCK_LAYERS, BLOCK_DILATIONS)):
            for j in range(n_layers):
                grown = layer_cls(cfg.growth_rate, cfg.bn_size * cfg.growth_rate, BLOCK_KERNEL, dilation, train,
                                  name=f"block{i + 1}_tdnnd{j + 1}", **kw)(x)
                x = jnp.concatenate([x, grown], axis=-1)
            self.sow("intermediates", f"inter_block{i + 1}", x)
            x = nn.relu(_bn(train, name=f"transit{i + 1}_bn")(x).astype(self.dtype))
            x = _dense(x.shape[-1] // 2, False, f"transit{i + 1}_linear", **kw)(x)
            x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
            self.sow("intermediates", f"inter_transit{i + 1}", x)
        x = nn.relu(_bn(train, name="out_nonlinear")(x).astype(self.dtype))
        self.sow("intermediates", "inter_out_nonlinear", x)
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=1)
        std = jnp.sqrt(jnp.sum((x32 - mean[:, None]) ** 2, axis=1) / (x32.shape[1] - 1))  # unbiased
        stats = jnp.concatenate([mean, std], axis=-1)
        self.sow("intermediates", "inter_stats", stats)
        emb = _dense(cfg.embedding_size, False, "dense_linear", **kw)(stats.astype(self.dtype))
        return _bn(train, affine=False, name="dense_bn")(emb)


@functools.lru_cache(maxsize=8)
def abstract_variables(config: CAMPPlusConfig) -> dict:
    """ShapeDtypeStructs of ``{"params", "batch_stats"}`` (no allocation)."""
    fbank = jax.ShapeDtypeStruct((1, 16, config.feat_dim), jnp.float32)
    return jax.eval_shape(lambda f: nn.unbox(CAMPPlus(config).init(jax.random.PRNGKey(0), f)), fbank)


def init_variables(config: CAMPPlusConfig, rng: jax.Array) -> dict:
    """Randomly initialised plain ``{"params", "batch_stats"}``."""
    fbank = jnp.zeros((1, 16, config.feat_dim), jnp.float32)
    return jax.jit(lambda r: nn.unbox(CAMPPlus(config).init(r, fbank)))(rng)


def _bn_into(sd: StateDict, params: dict, stats: dict, name: str, affine: bool = True) -> None:
    p, s = sd.batch_norm(affine)
    if p:
        params[name] = p
    stats[name] = s


def _fcm_from_torch(sd: StateDict) -> tuple[dict, dict]:
    params: dict[str, Any] = {}
    stats: dict[str, Any] = {}
    params["conv1"] = {"conv": sd.sub("conv1").conv2d(bias=False)}
    _bn_into(sd.sub("bn1"), params, stats, "bn1")
    for layer in (1, 2):
        for block in (0, 1):
            bsd = sd.sub(f"layer{layer}.{block}")
            bp: dict[str, Any] = {}
            bs: dict[str, Any] = {}
            bp["conv1"] = {"conv": bsd.sub("conv1").conv2d(bias=False)}
            bp["conv2"] = {"conv": bsd.sub("conv2").conv2d(bias=False)}
            _bn_into(bsd.sub("bn1"), bp, bs, "bn1")
            _bn_into(bsd.sub("bn2"), bp, bs, "bn2")
            if bsd.has("shortcut.0.weight"):
                bp["shortcut_conv"] = {"conv": bsd.sub("shortcut.0").conv2d(bias=False)}
                _bn_into(bsd.sub("shortcut.1"), bp, bs, "shortcut_bn")
            params[f"layer{layer}_{block}"], stats[f"layer{layer}_{block}"] = bp, bs
    params["conv2"] = {"conv": sd.sub("conv2").conv2d(bias=False)}
    _bn_into(sd.sub("bn2"), params, stats, "bn2")
    return params, stats


def from_torch(state_dict: Mapping[str, Any], config: CAMPPlusConfig) -> dict:
    """Official CAMPPlus state dict -> plain variables ``{"params": ..., "batch_stats": ...}``.

    Strict: every key is consumed (``num_batches_tracked`` counters are ignored: inference does not use them).
    """
    sd = StateDict(state_dict)
    params: dict[str, Any] = {}
    stats: dict[str, Any] = {}
    params["head"], stats["head"] = _fcm_from_torch(sd.sub("head"))
    xv = sd.sub("xvector")
    params["tdnn_linear"] = xv.sub("tdnn.linear").conv1d(bias=False)
    _bn_into(xv.sub("tdnn.nonlinear.batchnorm"), params, stats, "tdnn_bn")
    for i, n_layers in enumerate(BLOCK_LAYERS):
        for j in range(n_layers):
            lsd = xv.sub(f"block{i + 1}.tdnnd{j + 1}")
            lp: dict[str, Any] = {}
            ls: dict[str, Any] = {}
            _bn_into(lsd.sub("nonlinear1.batchnorm"), lp, ls, "nonlinear1")
            lp["linear1"] = lsd.sub("linear1").conv1d_as_dense(bias=False)
            _bn_into(lsd.sub("nonlinear2.batchnorm"), lp, ls, "nonlinear2")
            cam = lsd.sub("cam_layer")
            lp["cam_layer"] = {
                "linear_local": cam.sub("linear_local").conv1d(bias=False),
                "linear1": cam.sub("linear1").conv1d_as_dense(bias=True),
                "linear2": cam.sub("linear2").conv1d_as_dense(bias=True),
            }
            params[f"block{i + 1}_tdnnd{j + 1}"], stats[f"block{i + 1}_tdnnd{j + 1}"] = lp, ls
        _bn_into(xv.sub(f"transit{i + 1}.nonlinear.batchnorm"), params, stats, f"transit{i + 1}_bn")
        params[f"transit{i + 1}_linear"] = xv.sub(f"transit{i + 1}.linear").conv1d_as_dense(bias=False)
    _bn_into(xv.sub("out_nonlinear.batchnorm"), params, stats, "out_nonlinear")
    params["dense_linear"] = xv.sub("dense.linear").conv1d_as_dense(bias=False)
    _bn_into(xv.sub("dense.nonlinear.batchnorm"), params, stats, "dense_bn", affine=False)
    sd.finish()
    variables = jax.tree_util.tree_map(
        lambda a: np.asarray(a, np.float32), {"params": params, "batch_stats": stats}
    )
    expected = abstract_variables(config)
    check_params_match(variables["params"], expected["params"], "CAMPPlus params")
    check_params_match(variables["batch_stats"], expected["batch_stats"], "CAMPPlus batch_stats")
    return variables


__all__ = ["CAMPPlus", "CAMPPlusConfig", "FCM", "abstract_variables", "from_torch", "init_variables", "segment_mean"]
