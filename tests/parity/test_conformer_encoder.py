"""Parity of the Conformer conditioning encoder with the official ConformerEncoder (reference §5.1).

Tolerance: max relative error 1e-4 (float32; the reference is float32 torch on CPU, differences come
only from summation order in the matmuls/convs). Masks must be equal.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from indextts2_jax.nn.conformer import ConformerConfig, ConformerEncoder, from_torch, subsampling_freq_chunk
from tests.parity.cases import assert_close, cases, get_case

TOL = 1e-4


@pytest.mark.parametrize("chunked", [False, True], ids=["plain", "chunked"])
@pytest.mark.parametrize("case_path", cases("conformer_encoder"))
def test_conformer_encoder(case_path, chunked):
    """``chunked``: the subsampling as a scan over frequency chunks (the CPU path at official size)."""
    case = get_case(case_path)
    cfg = ConformerConfig.from_official(case.config)
    params = from_torch(case.params, cfg)
    if chunked:  # the fixture's F' must split, or the flag would silently test the plain path again
        assert subsampling_freq_chunk((cfg.input_size - 3) // 2 + 1, cfg.output_size) is not None
    model = ConformerEncoder(cfg, subsampling_chunked=chunked)
    run = jax.jit(lambda p, x, n: model.apply({"params": p}, x, n, return_intermediates=True))
    xs = jnp.asarray(case.inputs["xs"])
    ys, mask, inter = run(params, xs, jnp.asarray(case.inputs["xs_lens"]))
    out = case.outputs
    np.testing.assert_array_equal(np.asarray(mask), out["embed_mask"][:, 0])
    np.testing.assert_array_equal(np.asarray(mask), out["masks"][:, 0])
    assert_close(inter["pos_emb"], out["pos_emb"][0], TOL, "pos_emb")
    assert_close(inter["embed_x"], out["embed_x"], TOL, "embed_x")
    for i in range(cfg.num_blocks):
        # padded frames are not zeroed by the official blocks either: every frame is compared
        assert_close(inter["layer_outputs"][i], out["layer_outputs"][i], TOL, f"layer {i}")
    assert_close(ys, out["ys"], TOL, "ys")
    ys_full, mask_full, _ = run(params, xs, jnp.asarray(case.inputs["xs_lens_full"]))
    np.testing.assert_array_equal(np.asarray(mask_full), out["masks_full"][:, 0])
    assert_close(ys_full, out["ys_full"], TOL, "ys_full")
