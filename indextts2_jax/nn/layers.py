"""Dense and LayerNorm constructors with logical axis names on their params (shared by every model)."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp

LN_EPS = 1e-5


def dense(features: int, axes: tuple, use_bias: bool = True, name: str | None = None, dtype=jnp.float32,
          param_dtype=jnp.float32, kernel_init: Callable | None = None) -> nn.Dense:
    """``nn.Dense`` whose kernel (in, out) carries the logical axis names ``axes`` and bias ``axes[-1]``.

    ``kernel_init``: a Flax initializer (default LeCun normal); only from-scratch training sees it.
    """
    return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=param_dtype,
        kernel_init=nn.with_logical_partitioning(kernel_init or nn.initializers.lecun_normal(), axes),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), (axes[-1],)),
        name=name,
    )


def layer_norm(name: str | None = None, dtype=jnp.float32, param_dtype=jnp.float32, eps: float = LN_EPS,
               fast_variance: bool = True) -> nn.LayerNorm:
    """``nn.LayerNorm`` computed in float32 (``dtype`` is accepted for call symmetry and ignored), with the
    logical axis ``norm`` on its params. ``fast_variance=False``: the two-pass variance, as torch computes it
    (the w2v-BERT and codec ports use it; the conformer and GPT-2 ports the one-pass ``E[x^2] - E[x]^2``)."""
    del dtype
    return nn.LayerNorm(
        epsilon=eps,
        dtype=jnp.float32,
        param_dtype=param_dtype,
        use_fast_variance=fast_variance,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)),
        name=name,
    )


# How a module attends (``nn/gpt2.py``'s causal training forward, ``nn/dit.py``'s S2M estimator): ``"einsum"`` (ours:
# scores, softmax and weighted sum as separate ops, the S x S scores materialized) or ``jax.nn.dot_product_attention``
# with ``implementation="xla"`` or ``"cudnn"`` (fused flash attention on NVIDIA GPUs; bfloat16/float16 only).
ATTENTION_IMPLEMENTATIONS = ("einsum", "xla", "cudnn")


def check_attention(attention: str, dtype=None) -> None:
    """Raise ValueError for an unknown ``attention`` name, or cuDNN attention with a float32 compute dtype."""
    if attention not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"attention={attention!r}: expected one of {ATTENTION_IMPLEMENTATIONS}")
    if attention == "cudnn" and dtype is not None and jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
        raise ValueError(f"attention='cudnn' computes in bfloat16 or float16, not {jnp.dtype(dtype).name}: set the "
                         "compute dtype, or attention='einsum'")
