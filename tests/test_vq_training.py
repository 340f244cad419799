"""Nearest-code search (chunked, sharded) and the codebook-training functions of ``indextts2_jax.nn.vq``."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh

from indextts2_jax.nn import vq
from tests.subproc import cpu_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _numpy_nearest(latents, codebook, metric):
    x = np.asarray(latents, np.float64)
    c = np.asarray(codebook, np.float64)
    if metric == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
        c = c / np.maximum(np.linalg.norm(c, axis=-1, keepdims=True), 1e-12)
        return np.argmax(x @ c.T, axis=-1)
    return np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=-1)


def _clustered(key, n_clusters, per_cluster, dim, noise):
    k1, k2 = jax.random.split(key)
    centers = jax.random.normal(k1, (n_clusters, dim))
    points = centers[:, None, :] + noise * jax.random.normal(k2, (n_clusters, per_cluster, dim))
    return np.asarray(centers), np.asarray(points.reshape(-1, dim))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_nearest_code_matches_numpy_bruteforce(metric):
    rng = np.random.default_rng(0)
    latents = rng.normal(size=(301, 8)).astype(np.float32)
    codebook = rng.normal(size=(203, 8)).astype(np.float32)
    expected = _numpy_nearest(latents, codebook, metric)
    got_full = np.asarray(vq.nearest_code(latents, codebook, metric=metric))
    np.testing.assert_array_equal(got_full, expected)
    for qc, cc in [(64, None), (None, 50), (37, 16), (1000, 1000)]:
        got = np.asarray(vq.nearest_code(latents, codebook, metric=metric, query_chunk=qc, codebook_chunk=cc))
        np.testing.assert_array_equal(got, expected, err_msg=f"query_chunk={qc} codebook_chunk={cc}")
    # leading dims are kept
    assert vq.nearest_code(latents.reshape(7, 43, 8), codebook, metric=metric).shape == (7, 43)


def test_nearest_code_ties_take_the_lowest_index():
    codebook = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [1.0, 0.0]], np.float32)  # 0, 2, 3 same direction
    latents = np.array([[3.0, 0.0], [0.0, 5.0]], np.float32)
    for cc in (None, 1, 2, 3):
        got = np.asarray(vq.nearest_code(latents, codebook, codebook_chunk=cc))
        np.testing.assert_array_equal(got, [0, 1])


def test_sharded_nearest_code_one_device_mesh():
    rng = np.random.default_rng(1)
    latents = rng.normal(size=(130, 8)).astype(np.float32)
    codebook = rng.normal(size=(96, 8)).astype(np.float32)
    mesh = Mesh(np.array(jax.devices()[:1]), ("codebook",))
    sharded = vq.shard_codebook(codebook, mesh, "codebook")
    assert sharded.sharding.spec[0] == "codebook"
    want = _numpy_nearest(latents, codebook, "cosine")
    got = vq.sharded_nearest_code(latents, sharded, mesh, "codebook", query_chunk=32, codebook_chunk=40)
    np.testing.assert_array_equal(np.asarray(got), want)
    # mesh and axis taken from the codebook's NamedSharding
    np.testing.assert_array_equal(np.asarray(vq.sharded_nearest_code(latents, sharded)), want)
    # logical axis "codebook" resolved through Flax-style rules onto a differently named mesh axis
    mesh_t = Mesh(np.array(jax.devices()[:1]), ("tensor",))
    rules = (("batch", "data"), ("codebook", "tensor"))
    assert vq.codebook_mesh_axes(rules, mesh_t) == ("tensor",)
    placed = vq.shard_codebook(codebook, mesh_t, rules=rules)
    assert placed.sharding.spec[0] == "tensor"
    np.testing.assert_array_equal(np.asarray(vq.sharded_nearest_code(latents, placed, mesh_t, rules=rules)), want)


def test_sharded_nearest_code_four_simulated_devices():
    """Codebook rows really split over 4 (simulated CPU) devices; ties across shards -> lowest index."""
    script = textwrap.dedent(
        """
        import numpy as np, jax
        from jax.sharding import Mesh
        from indextts2_jax.nn import vq
        assert len(jax.devices()) == 4, jax.devices()
        rng = np.random.default_rng(2)
        latents = rng.normal(size=(77, 8)).astype(np.float32)
        codebook = rng.normal(size=(64, 8)).astype(np.float32)
        # an exact tie across shards (the same row in shards 0 and 2): index 5 must win. (A scaled copy, 3 x row 5,
        # ties only in exact arithmetic: jax 0.12's XLA normalizes the two a last bit apart and ranks 40 first.)
        codebook[40] = codebook[5]
        latents[0] = codebook[5]
        mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "codebook_shard"))
        sharded = vq.shard_codebook(codebook, mesh, ("data", "codebook_shard"))
        assert len(sharded.addressable_shards) == 4 and sharded.addressable_shards[0].data.shape == (16, 8)
        got = np.asarray(vq.sharded_nearest_code(latents, sharded))  # mesh/axes from the sharding
        x = latents / np.linalg.norm(latents, axis=-1, keepdims=True)
        c = codebook / np.linalg.norm(codebook, axis=-1, keepdims=True)
        scores = x.astype(np.float64) @ c.T.astype(np.float64)
        scores[:, 40] = scores[:, 5]  # equal columns; kept equal whatever a BLAS rounds (numpy 2.4 has split ties)
        want = np.argmax(scores, axis=-1)  # first maximum: the lowest index
        assert got[0] == 5, got[0]
        np.testing.assert_array_equal(got, want)
        print("OK")
        """
    )
    env = cpu_env(4)
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-3000:]


def test_straight_through_and_loss_gradients():
    z_e = jnp.array([[0.0, 1.0], [2.0, -1.0]])
    z_q = jnp.array([[0.5, 0.5], [1.0, 0.0]])
    out, vjp = jax.vjp(vq.straight_through, z_e, z_q)
    np.testing.assert_allclose(out, z_q)
    g_e, g_q = vjp(jnp.ones_like(out))
    np.testing.assert_allclose(g_e, 1.0)  # identity to the encoder
    np.testing.assert_allclose(g_q, 0.0)  # nothing to the codebook through the output
    commit_grads = jax.grad(lambda e, q: vq.vq_losses(e, q)[0], argnums=(0, 1))(z_e, z_q)
    codebook_grads = jax.grad(lambda e, q: vq.vq_losses(e, q)[1], argnums=(0, 1))(z_e, z_q)
    np.testing.assert_allclose(commit_grads[1], 0.0)  # commitment moves only the encoder
    np.testing.assert_allclose(codebook_grads[0], 0.0)  # codebook loss moves only the codebook
    np.testing.assert_allclose(commit_grads[0], 0.15 * 2 * (z_e - z_q) / z_e.size, rtol=1e-6)
    commit, codebook = vq.vq_losses(z_e, z_q)
    np.testing.assert_allclose(codebook, np.mean((np.asarray(z_e) - np.asarray(z_q)) ** 2), rtol=1e-6)
    np.testing.assert_allclose(commit, 0.15 * codebook, rtol=1e-6)
    # a mask excludes padded rows
    _, masked = vq.vq_losses(z_e, z_q, mask=jnp.array([True, False]))
    np.testing.assert_allclose(masked, np.mean((np.asarray(z_e[0]) - np.asarray(z_q[0])) ** 2), rtol=1e-6)


def test_usage_and_perplexity():
    counts = vq.code_usage(jnp.array([0, 0, 1, 3]), 4)
    np.testing.assert_array_equal(counts, [2, 1, 0, 1])
    p = np.array([0.5, 0.25, 0.0, 0.25])
    np.testing.assert_allclose(vq.codebook_perplexity(counts), np.exp(-(p[p > 0] * np.log(p[p > 0])).sum()), rtol=1e-5)
    np.testing.assert_allclose(vq.codebook_perplexity(jnp.ones(16)), 16.0, rtol=1e-5)
    np.testing.assert_allclose(vq.usage_fraction(counts), 0.75)
    masked = vq.code_usage(jnp.array([[0, 1], [2, 2]]), 3, mask=jnp.array([[1, 1], [1, 0]]))
    np.testing.assert_array_equal(masked, [1, 1, 1])


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_kmeans_init_and_optax_steps_improve_the_codebook(metric):
    """Clustered data, 16 clusters, 16 codes. A collapsed random codebook (all codes near one point)
    uses few codes; k-means++ + Lloyd finds the clusters (usage ~ all codes, error ~ noise floor);
    a few Adam steps on the codebook loss with dead-code replacement keep it there."""
    dim, n_clusters, per, noise = 8, 16, 64, 0.05
    centers, points = _clustered(jax.random.key(0), n_clusters, per, dim, noise)
    points = jnp.asarray(points)
    # noise floor: mean squared distance of points to their true centre (in the metric's space)
    true_err = float(vq.quantization_error(points, centers, metric))
    bad = np.asarray(centers[:1] + 0.3 * jax.random.normal(jax.random.key(1), (n_clusters, dim)))
    bad_err = float(vq.quantization_error(points, bad, metric))
    bad_usage = float(vq.usage_fraction(vq.code_usage(vq.nearest_code(points, bad, metric=metric), n_clusters)))
    assert bad_usage <= 0.75

    codebook, idx, counts = vq.kmeans(jax.random.key(3), points, n_clusters, num_iters=10, metric=metric)
    km_err = float(vq.quantization_error(points, codebook, metric))
    assert float(vq.usage_fraction(counts)) == 1.0
    assert km_err < 1.5 * true_err < 0.2 * bad_err, (km_err, true_err, bad_err)
    np.testing.assert_array_equal(idx, vq.nearest_code(points, codebook, metric=metric))

    opt = optax.adam(0.05)

    def loss_fn(cb, feats):
        target = vq._prepare_points(feats, metric)
        cb_space = vq.l2_normalize(cb) if metric == "cosine" else cb
        idx = vq.nearest_code(feats, cb, metric=metric)
        return vq.vq_losses(target, vq.lookup(cb_space, idx))[1], idx

    @jax.jit
    def step(cb, state, key):
        (loss, idx), grads = jax.value_and_grad(loss_fn, has_aux=True)(cb, points)
        updates, state = opt.update(grads, state, cb)
        cb = optax.apply_updates(cb, updates)
        cb, _ = vq.replace_dead_codes(key, cb, vq.code_usage(idx, n_clusters), points)
        return cb, state, loss

    def train(codebook, n_steps):
        codebook = jnp.asarray(codebook)
        state = opt.init(codebook)
        for i in range(n_steps):
            codebook, state, _ = step(codebook, state, jax.random.key(100 + i))
        err = float(vq.quantization_error(points, codebook, metric))
        usage = float(vq.usage_fraction(vq.code_usage(vq.nearest_code(points, codebook, metric=metric), n_clusters)))
        return err, usage

    # optax steps from the k-means init keep every code in use at the noise floor
    err, usage = train(codebook, 20)
    assert usage == 1.0 and err < 1.5 * true_err, (err, true_err)
    # from the collapsed codebook, codebook loss + dead-code replacement recover the clusters
    # (without replacement usage stays at the collapsed level, ~0.6, and the error ~10x higher)
    err, usage = train(bad, 60)
    assert usage >= 0.875 > bad_usage + 0.1, (usage, bad_usage)
    assert err < 0.1 * bad_err, (err, bad_err)


def test_replace_dead_codes():
    codebook = jnp.array([[0.0, 0.0], [100.0, 100.0], [1.0, 1.0], [-100.0, 5.0]])
    features = jnp.array([[0.1, 0.0], [0.9, 1.0], [0.2, 0.1], [1.1, 0.9], [0.5, 0.5]])
    counts = vq.code_usage(vq.nearest_code(features, codebook, metric="euclidean"), 4)
    new, dead = vq.replace_dead_codes(jax.random.key(0), codebook, counts, features)
    np.testing.assert_array_equal(dead, [False, True, False, True])
    np.testing.assert_array_equal(new[0], codebook[0])
    np.testing.assert_array_equal(new[2], codebook[2])
    feats = np.asarray(features)
    for row in (1, 3):
        assert any(np.array_equal(np.asarray(new[row]), f) for f in feats)
    assert not np.array_equal(np.asarray(new[1]), np.asarray(new[3]))  # distinct features


def test_random_valid_rows():
    valid = jnp.array([False, True, True, False, True, True, True, False])
    picks, n_valid = vq.random_valid_rows(jax.random.key(3), valid, 5)
    assert int(n_valid) == 5
    assert sorted(np.asarray(picks).tolist()) == [1, 2, 4, 5, 6]  # distinct while count <= valid rows
    picks, _ = vq.random_valid_rows(jax.random.key(3), valid, 12)  # more than valid: cycles
    p = np.asarray(picks)
    assert set(p.tolist()) == {1, 2, 4, 5, 6} and np.array_equal(p[:5], p[5:10])
    draws = {tuple(np.asarray(vq.random_valid_rows(jax.random.key(s), valid, 2)[0])) for s in range(8)}
    assert len(draws) > 1  # the key changes the draw
    _, n_valid = vq.random_valid_rows(jax.random.key(0), jnp.zeros((4,), bool), 3)
    assert int(n_valid) == 0
