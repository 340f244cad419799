"""The depthwise Conv1d as shifted sums equals flax's grouped nn.Conv (same params, any padding)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from indextts2_jax.nn.depthwise import DepthwiseConv1D


@pytest.mark.parametrize("kernel,padding,use_bias", [(7, (3, 3), True), (15, (7, 7), True), (31, (30, 0), False),
                                                     (4, (0, 0), True)])
def test_equals_grouped_conv(kernel, padding, use_bias):
    c = 6
    x = jax.random.normal(jax.random.key(0), (2, 23, c))
    ours = DepthwiseConv1D(c, kernel, padding, use_bias=use_bias)
    ref = nn.Conv(c, (kernel,), padding=[padding], feature_group_count=c, use_bias=use_bias)
    params = ours.init(jax.random.key(1), x)
    if use_bias:  # a non-zero bias
        params = jax.tree.map(lambda p: p + 0.5 if p.ndim == 1 else p, params)
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, ref.init(jax.random.key(1), x))
    got, want = ours.apply(params, x), ref.apply(params, x)
    assert got.shape == want.shape == (2, 23 + sum(padding) - kernel + 1, c)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
