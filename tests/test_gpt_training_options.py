"""The GPT-2 stack's training options (``nn/gpt2.py``): how the causal forward attends and what the backward
rematerialises. Each option must leave the loss and the gradients as they are (float rounding aside), keep
the param paths, and the remat policies must lower what the backward keeps from the forward. (``attention="cudnn"``
needs an NVIDIA GPU: it is the same ``jax.nn.dot_product_attention`` call as ``"xla"`` with another
implementation string; ``benchmarks.targets`` runs it on a lease.)"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo
from indextts2_jax.errors import ConfigError
from indextts2_jax.models.gpt import UnifiedVoice, t2s_loss
from indextts2_jax.nn.gpt2 import GPT2Transformer, causal_mask
from tests.test_gpt_generate import CFG, random_params


def _loss_and_grads(attention: str, remat: str, params, conds, text, mel):
    model = UnifiedVoice(CFG, attention=attention, remat=remat)
    lengths_t = jnp.asarray([text.shape[1], 3], jnp.int32)
    lengths_m = jnp.asarray([mel.shape[1], 5], jnp.int32)

    def loss(p):
        out = model.apply({"params": p}, conds, text, lengths_t, mel, lengths_m,
                          method=UnifiedVoice.teacher_forced)
        return t2s_loss(out, lengths_t, lengths_m, 0.3, 1.0)[0], out["latent"]

    (value, latent), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return value, latent, grads


@pytest.fixture(scope="module")
def reference():
    """Inputs and the default options' (einsum attention, no remat) loss, latent and gradients."""
    params = random_params(CFG)
    rng = np.random.default_rng(0)
    conds = jnp.asarray(rng.normal(0, 1, (2, CFG.cond_rows, CFG.model_dim)).astype(np.float32))
    text = jnp.asarray(rng.integers(2, CFG.number_text_tokens - 2, (2, 6)), jnp.int32)
    mel = jnp.asarray(rng.integers(0, CFG.number_mel_codes - 2, (2, 9)), jnp.int32)
    inputs = (params, conds, text, mel)
    return inputs, _loss_and_grads("einsum", "none", *inputs)


@pytest.mark.parametrize("attention,remat", [("xla", "none"), ("einsum", "dots"), ("xla", "full")])
def test_options_keep_the_loss_and_the_gradients(attention, remat, reference):
    inputs, (ref_loss, ref_latent, ref_grads) = reference
    loss, latent, grads = _loss_and_grads(attention, remat, *inputs)
    # float32 throughout: only the order of the sums differs (fused softmax, recomputed activations)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(latent, ref_latent, rtol=1e-4, atol=1e-5)
    assert jax.tree.structure(grads) == jax.tree.structure(ref_grads)  # same param paths (h_0, ...)
    for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads)):
        scale = float(jnp.max(jnp.abs(r))) + 1e-12
        assert float(jnp.max(jnp.abs(g - r))) <= 1e-4 * scale, jax.tree_util.keystr(path)
    assert float(jnp.max(jnp.abs(ref_grads["gpt"]["h_0"]["attn"]["c_attn"]["kernel"]))) > 0  # a live gradient


def test_mask_none_is_the_causal_mask():
    model = GPT2Transformer(model_dim=16, layers=1, heads=2)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 7, 16)).astype(np.float32))
    params = model.init(jax.random.key(0), x, None)
    causal, _ = model.apply(params, x, causal_mask(7))
    implicit, _ = model.apply(params, x, None)
    fused, _ = GPT2Transformer(model_dim=16, layers=1, heads=2, attention="xla").apply(params, x, None)
    np.testing.assert_array_equal(implicit, causal)
    np.testing.assert_allclose(fused, causal, rtol=1e-5, atol=1e-6)
    # the first position sees itself only: changing a later input leaves it unchanged
    later = x.at[:, 3:].set(0.0)
    np.testing.assert_allclose(GPT2Transformer(16, 1, 2, attention="xla").apply(params, later, None)[0][:, :3],
                               fused[:, :3], rtol=1e-5, atol=1e-6)


def _residual_bytes(remat: str) -> int:
    """Bytes the backward pass of 4 blocks over 256 positions keeps from the forward: the leaves of the
    ``jax.vjp`` closure (shapes only, nothing runs)."""
    model = GPT2Transformer(model_dim=64, layers=4, heads=4, remat=remat)
    x = jax.ShapeDtypeStruct((4, 256, 64), jnp.float32)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape), None))

    def loss(p, x):
        return jnp.sum(model.apply(p, x, None)[0] ** 2)

    residuals = jax.eval_shape(lambda p, x: jax.vjp(loss, p, x)[1], params, x)
    return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(residuals))


def test_remat_lowers_what_the_backward_keeps():
    """Without remat every block keeps its S x S attention tensors and its 4x-wide MLP activations for the
    backward; "dots" keeps the matmul outputs only, "full" each block's input (and the weights). (XLA:CPU's
    own memory analysis does not show it: measured, its temp buffers stay the same or grow with remat.)"""
    none, dots, full = (_residual_bytes(r) for r in ("none", "dots", "full"))
    assert full < dots < 0.2 * none, (none, dots, full)


@pytest.mark.parametrize("stage,key,value,message", [
    ("gpt", "attention", "flash", "gpt.attention='flash'"),
    ("gpt", "remat", "some", "gpt.remat='some'"),
    ("gpt", "attention", "cudnn", "bfloat16 or float16"),  # the demo computes in float32
    ("s2mel", "attention", "flash", "s2mel.attention='flash'"),
    ("s2mel", "attention", "cudnn", "bfloat16 or float16"),
])
def test_config_options_are_checked(stage, key, value, message):
    from indextts2_jax.train.tasks import task_class

    c = demo.get_config(f"stage={stage}")
    c[stage][key] = value  # the stage's own config section
    with pytest.raises(ConfigError, match=message):
        task_class(stage)(c)
