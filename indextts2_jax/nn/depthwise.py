"""Depthwise 1-D convolution as a sum of shifted products (channels-last).

``nn.Conv(features=C, feature_group_count=C)`` lowers on XLA:CPU to a grouped convolution that
runs far below the memory rate: a (1, 499, 384) input with a 7-tap kernel takes 5.5 ms there and
0.2 ms as ``sum_k x[:, t + k] * w[k]`` (one fused elementwise loop). The semantic codec's encoder
(12 such convs), the conditioning conformers (15 taps) and w2v-BERT (31 taps) use this one.

:class:`DepthwiseConv1D` declares the same params as the ``nn.Conv`` it replaces (``kernel``
(K, 1, C), ``bias`` (C,)), so checkpoints and converters are unchanged. Results equal the
convolution up to float32 summation order (~1e-7 relative).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


def depthwise_conv1d(x: jax.Array, kernel: jax.Array, padding: tuple[int, int]) -> jax.Array:
    """x (B, T, C), kernel (K, C), zero padding (left, right) -> (B, T + left + right - K + 1, C).

    Cross-correlation, as ``lax.conv_general_dilated`` (and torch's Conv1d) compute it.
    """
    k = kernel.shape[0]
    xp = jnp.pad(x, ((0, 0), tuple(padding), (0, 0)))
    t_out = xp.shape[1] - k + 1
    out = xp[:, 0:t_out] * kernel[0]
    for i in range(1, k):
        out = out + xp[:, i:i + t_out] * kernel[i]
    return out


class DepthwiseConv1D(nn.Module):
    """Drop-in for ``nn.Conv(C, (K,), padding=[padding], feature_group_count=C)`` on (B, T, C)."""

    features: int
    kernel_size: int
    padding: tuple[int, int]
    use_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (self.kernel_size, 1, self.features), self.param_dtype)
        out = depthwise_conv1d(x.astype(self.dtype), kernel[:, 0, :].astype(self.dtype), self.padding)
        if self.use_bias:
            out = out + self.param("bias", self.bias_init, (self.features,), self.param_dtype).astype(self.dtype)
        return out
