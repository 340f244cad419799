"""Vector quantisation: nearest-code search that scales, and pure functions for codebook training.

Search
  :func:`code_scores` / :func:`nearest_code`: argmax over codes of the cosine similarity of
  L2-normalised vectors (``metric="cosine"``, what IndexTTS2's semantic codec uses), or of the
  negative squared Euclidean distance (``metric="euclidean"``). The search is a batched matmul;
  queries and the codebook can be processed in chunks so the (queries x codes) score matrix never
  has to exist whole. :func:`sharded_nearest_code` shards the codebook rows over a mesh axis
  (logical axis ``"codebook"``): each device searches its rows, then one small all-gather of
  (best score, best index) per query picks the winner. Ties go to the lowest index everywhere,
  as ``torch.max``/``argmax`` on the official path.

Training (all jittable, no hidden state)
  :func:`straight_through`, :func:`vq_losses` (commitment + codebook, RepCodec weighting),
  :func:`kmeans_plus_plus_init`, :func:`kmeans` (Lloyd steps in ``lax.fori_loop``),
  :func:`replace_dead_codes`, :func:`code_usage`, :func:`codebook_perplexity`,
  :func:`quantization_error`.

Shapes: latents (N, d) (any leading dims where stated), codebook (K, d), indices (N,) int32.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "l2_normalize",
    "code_scores",
    "nearest_code",
    "lookup",
    "codebook_mesh_axes",
    "shard_codebook",
    "sharded_nearest_code",
    "straight_through",
    "vq_losses",
    "kmeans_plus_plus_init",
    "kmeans",
    "replace_dead_codes",
    "code_usage",
    "codebook_perplexity",
    "usage_fraction",
    "quantization_error",
]

METRICS = ("cosine", "euclidean")


def l2_normalize(x, axis: int = -1, eps: float = 1e-12):
    """``x / max(||x||, eps)`` along ``axis`` (torch ``F.normalize``), in float32."""
    x = jnp.asarray(x, jnp.float32)
    norm = jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=True))
    return x / jnp.maximum(norm, eps)


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def _prepare_codebook(codebook, metric: str):
    """(K, d) -> (normalised codebook, per-code offset) so that score = q . c' + offset."""
    codebook = jnp.asarray(codebook, jnp.float32)
    if metric == "cosine":
        return l2_normalize(codebook), jnp.zeros(codebook.shape[:1], jnp.float32)
    return codebook, -0.5 * jnp.sum(codebook * codebook, axis=-1)


def _prepare_queries(latents, metric: str):
    latents = jnp.asarray(latents, jnp.float32)
    return l2_normalize(latents) if metric == "cosine" else latents


def code_scores(latents, codebook, metric: str = "cosine"):
    """Similarity of every latent to every code, (N, d) x (K, d) -> (N, K) float32.

    cosine: ``normalize(q) . normalize(c)``; euclidean: ``q . c - |c|^2 / 2`` (= ``-|q - c|^2 / 2``
    up to a per-query constant, so the argmax is the nearest code).
    """
    _check_metric(metric)
    codes, offset = _prepare_codebook(codebook, metric)
    queries = _prepare_queries(latents, metric)
    return queries @ codes.T + offset


def _best_in_codebook(queries, codes, offset, codebook_chunk: int | None, index_offset=0):
    """Best (score, index) per query over prepared codes. queries (n, d), codes (K, d) -> (n,), (n,)."""
    k = codes.shape[0]
    if codebook_chunk is None or codebook_chunk >= k:
        scores = queries @ codes.T + offset
        idx = jnp.argmax(scores, axis=-1).astype(jnp.int32)
        best = jnp.take_along_axis(scores, idx[:, None], axis=-1)[:, 0]
        return best, idx + index_offset
    n_chunks = -(-k // codebook_chunk)
    pad = n_chunks * codebook_chunk - k
    codes = jnp.pad(codes, ((0, pad), (0, 0))).reshape(n_chunks, codebook_chunk, -1)
    offset = jnp.pad(offset, (0, pad), constant_values=-jnp.inf).reshape(n_chunks, codebook_chunk)

    def step(carry, chunk):
        best, best_idx = carry
        chunk_codes, chunk_offset, start = chunk
        scores = queries @ chunk_codes.T + chunk_offset
        idx = jnp.argmax(scores, axis=-1).astype(jnp.int32)
        score = jnp.take_along_axis(scores, idx[:, None], axis=-1)[:, 0]
        better = score > best  # strict: earlier chunks win ties (lowest index)
        return (jnp.where(better, score, best), jnp.where(better, idx + start, best_idx)), None

    n = queries.shape[0]
    init = (jnp.full((n,), -jnp.inf, jnp.float32), jnp.zeros((n,), jnp.int32))
    starts = jnp.arange(n_chunks, dtype=jnp.int32) * codebook_chunk
    (best, best_idx), _ = jax.lax.scan(step, init, (codes, offset, starts))
    return best, best_idx + index_offset


def _search(latents, codebook, metric, query_chunk, codebook_chunk, index_offset=0):
    """Best (score, index) for latents (..., d) over codebook (K, d)."""
    lead = latents.shape[:-1]
    queries = _prepare_queries(latents.reshape(-1, latents.shape[-1]), metric)
    codes, offset = _prepare_codebook(codebook, metric)
    n = queries.shape[0]
    if query_chunk is None or query_chunk >= n:
        best, idx = _best_in_codebook(queries, codes, offset, codebook_chunk, index_offset)
    else:
        n_chunks = -(-n // query_chunk)
        padded = jnp.pad(queries, ((0, n_chunks * query_chunk - n), (0, 0))).reshape(n_chunks, query_chunk, -1)
        best, idx = jax.lax.map(lambda q: _best_in_codebook(q, codes, offset, codebook_chunk, index_offset), padded)
        best, idx = best.reshape(-1)[:n], idx.reshape(-1)[:n]
    return best.reshape(lead), idx.reshape(lead)


@functools.partial(jax.jit, static_argnames=("metric", "query_chunk", "codebook_chunk"))
def nearest_code(
    latents,
    codebook,
    metric: str = "cosine",
    query_chunk: int | None = None,
    codebook_chunk: int | None = None,
):
    """Index of the best code for each latent: (..., d), (K, d) -> (...) int32. Jitted.

    ``query_chunk`` / ``codebook_chunk`` bound the score block to (query_chunk x codebook_chunk)
    (``lax.map`` over query blocks, ``lax.scan`` with a running best over code blocks); None means
    one block. Results do not depend on the chunking (ties: lowest index).
    """
    _check_metric(metric)
    return _search(latents, codebook, metric, query_chunk, codebook_chunk)[1]


def lookup(codebook, indices):
    """Raw codebook rows: (K, d), (...) int -> (..., d)."""
    return jnp.take(jnp.asarray(codebook), indices, axis=0)


def codebook_mesh_axes(rules=None, mesh: Mesh | None = None, logical: str = "codebook") -> tuple[str, ...]:
    """Mesh axes that the logical axis ``"codebook"`` maps to.

    With Flax logical ``rules`` (``(("codebook", "tensor"), ...)``) they decide; without rules, a
    mesh axis literally named ``"codebook"`` is used if ``mesh`` has one; else () (replicated).
    """
    if rules is not None:
        target = dict((name, t) for name, t in rules).get(logical)
    else:
        target = logical if mesh is None or logical in mesh.axis_names else None
    if target is None:
        return ()
    return (target,) if isinstance(target, str) else tuple(target)


def shard_codebook(codebook, mesh: Mesh, axis: str | tuple[str, ...] | None = None, rules=None):
    """Place a (K, d) codebook with its rows sharded over mesh ``axis`` (NamedSharding P(axis, None)).

    ``axis=None`` resolves the logical axis ``"codebook"`` with :func:`codebook_mesh_axes`.
    """
    axes = codebook_mesh_axes(rules, mesh) if axis is None else ((axis,) if isinstance(axis, str) else tuple(axis))
    spec = P(axes if len(axes) > 1 else (axes[0] if axes else None), None)
    return jax.device_put(codebook, NamedSharding(mesh, spec))


def sharded_nearest_code(
    latents,
    codebook,
    mesh: Mesh | None = None,
    axis: str | tuple[str, ...] | None = None,
    metric: str = "cosine",
    query_chunk: int | None = None,
    codebook_chunk: int | None = None,
    rules=None,
):
    """:func:`nearest_code` with the codebook rows sharded over mesh ``axis``.

    Each device scores the latents (replicated) against its K / n_devices rows, keeps its best
    (score, global index) per latent, and an all-gather of those two (N,) vectors over ``axis``
    picks the winner (ties: the lowest index, i.e. the first shard). The codebook is never
    gathered. K must be divisible by the axis size. latents (..., d) -> indices (...) int32.

    ``mesh``/``axis`` default to the codebook's own ``NamedSharding`` (as placed by
    :func:`shard_codebook`); ``axis`` may also come from logical ``rules`` (logical name
    ``"codebook"``). A codebook that is not sharded falls back to :func:`nearest_code`.
    """
    _check_metric(metric)
    if mesh is None:
        sharding = getattr(codebook, "sharding", None)
        if not isinstance(sharding, NamedSharding):
            raise ValueError("pass mesh= or a codebook placed with a NamedSharding (see shard_codebook)")
        mesh = sharding.mesh
        if axis is None:
            row_spec = sharding.spec[0] if len(sharding.spec) else None
            axis = () if row_spec is None else row_spec
    if axis is None:
        axis = codebook_mesh_axes(rules, mesh)
    axes = (axis,) if isinstance(axis, str) else tuple(axis)
    if not axes:
        return nearest_code(latents, codebook, metric=metric, query_chunk=query_chunk, codebook_chunk=codebook_chunk)
    n_shards = int(np.prod([mesh.shape[a] for a in axes]))
    k = codebook.shape[0]
    if k % n_shards:
        raise ValueError(f"codebook size {k} is not divisible by the {n_shards} devices of mesh axis {axes}")
    fn = _sharded_search_fn(mesh, axes, metric, query_chunk, codebook_chunk, k // n_shards)
    return fn(latents, codebook)


@functools.lru_cache(maxsize=32)
def _sharded_search_fn(mesh, axes, metric, query_chunk, codebook_chunk, rows_per_shard):
    spec_axis = axes if len(axes) > 1 else axes[0]

    def local(latents, codebook_shard):
        shard = jax.lax.axis_index(axes)
        best, idx = _search(latents, codebook_shard, metric, query_chunk, codebook_chunk, shard * rows_per_shard)
        all_best = jax.lax.all_gather(best, axes)  # (n_shards, ...)
        all_idx = jax.lax.all_gather(idx, axes)
        winner = jnp.argmax(all_best, axis=0)  # first shard on ties = lowest global index
        return jnp.take_along_axis(all_idx, winner[None], axis=0)[0]

    mapped = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(spec_axis, None)), out_specs=P(), check_vma=False)
    return jax.jit(mapped)


# --- training ---------------------------------------------------------------------------------


def straight_through(z_e, z_q):
    """``z_e + stop_gradient(z_q - z_e)``: the value of z_q, the gradient of z_e (identity)."""
    return z_e + jax.lax.stop_gradient(z_q - z_e)


def _masked_mean(x, mask):
    """Mean of (..., d) squared errors over valid positions. mask (...) bool/float or None."""
    per_pos = jnp.mean(x, axis=-1)
    if mask is None:
        return jnp.mean(per_pos)
    mask = jnp.asarray(mask, jnp.float32)
    return jnp.sum(per_pos * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def vq_losses(z_e, z_q, mask=None, commitment: float = 0.15, codebook_weight: float = 1.0):
    """Commitment and codebook losses (as RepCodec's FVQ, eval of the training branch).

    z_e: (..., d) encoder latents (projected); z_q: (..., d) raw codebook rows for them;
    mask: (...) valid positions or None. Returns ``(commit_loss, codebook_loss)`` float32 scalars:
    commit = commitment * mse(z_e, sg(z_q)) trains the encoder; codebook = codebook_weight *
    mse(sg(z_e), z_q) trains the codebook. (The official loss is a mean per batch row, then a mean
    over rows; with a mask the mean is over valid positions, equal for unpadded equal-length rows.)
    """
    z_e = jnp.asarray(z_e, jnp.float32)
    z_q = jnp.asarray(z_q, jnp.float32)
    commit = _masked_mean(jnp.square(z_e - jax.lax.stop_gradient(z_q)), mask) * commitment
    codebook = _masked_mean(jnp.square(jax.lax.stop_gradient(z_e) - z_q), mask) * codebook_weight
    return commit, codebook


def _prepare_points(features, metric):
    features = jnp.asarray(features, jnp.float32).reshape(-1, jnp.shape(features)[-1])
    return l2_normalize(features) if metric == "cosine" else features


@functools.partial(jax.jit, static_argnames=("num_codes", "metric"))
def kmeans_plus_plus_init(key, features, num_codes: int, metric: str = "cosine"):
    """k-means++ seeding: (N, d) features -> (num_codes, d) initial codebook. Jitted.

    The first code is a uniform draw; each next one is drawn with probability proportional to the
    squared distance to the nearest code chosen so far. With ``metric="cosine"`` the features are
    L2-normalised first (spherical k-means).
    """
    _check_metric(metric)
    points = _prepare_points(features, metric)
    n = points.shape[0]
    keys = jax.random.split(key, num_codes)
    first = points[jax.random.randint(keys[0], (), 0, n)]
    codes = jnp.zeros((num_codes, points.shape[1]), jnp.float32).at[0].set(first)
    min_dist = jnp.sum(jnp.square(points - first), axis=-1)

    def body(i, carry):
        codes, min_dist = carry
        total = jnp.sum(min_dist)
        probs = jnp.where(total > 0, min_dist / jnp.maximum(total, 1e-30), jnp.full_like(min_dist, 1.0 / n))
        pick = jax.random.choice(keys[i], n, p=probs)
        chosen = points[pick]
        min_dist = jnp.minimum(min_dist, jnp.sum(jnp.square(points - chosen), axis=-1))
        return codes.at[i].set(chosen), min_dist

    codes, _ = jax.lax.fori_loop(1, num_codes, body, (codes, min_dist))
    return codes


def _assign(points, codebook, metric):
    return _search(points, codebook, metric, None, None)[1]


def _lloyd_update(points, codebook, metric):
    """One Lloyd step; empty clusters keep their previous code."""
    idx = _assign(points, codebook, metric)
    k = codebook.shape[0]
    sums = jax.ops.segment_sum(points, idx, num_segments=k)
    counts = jax.ops.segment_sum(jnp.ones((points.shape[0],), jnp.float32), idx, num_segments=k)
    means = sums / jnp.maximum(counts, 1.0)[:, None]
    if metric == "cosine":
        means = l2_normalize(means)
    return jnp.where(counts[:, None] > 0, means, codebook)


@functools.partial(jax.jit, static_argnames=("num_codes", "num_iters", "metric"))
def kmeans(key, features, num_codes: int, num_iters: int = 10, metric: str = "cosine", init_codebook=None):
    """k-means(++) on (N, d) features -> (codebook (num_codes, d), indices (N,), counts (num_codes,)).

    Seeds with :func:`kmeans_plus_plus_init` (or ``init_codebook``), then ``num_iters`` Lloyd steps
    in a ``lax.fori_loop``. ``metric="cosine"`` runs spherical k-means (unit-norm codes), matching
    the cosine search of the codec; ``"euclidean"`` plain k-means.
    """
    _check_metric(metric)
    points = _prepare_points(features, metric)
    codebook = (
        kmeans_plus_plus_init(key, points, num_codes, metric)
        if init_codebook is None
        else jnp.asarray(init_codebook, jnp.float32)
    )
    codebook = jax.lax.fori_loop(0, num_iters, lambda _, c: _lloyd_update(points, c, metric), codebook)
    idx = _assign(points, codebook, metric)
    return codebook, idx, code_usage(idx, num_codes)


@functools.partial(jax.jit, static_argnames=("codebook_size",))
def code_usage(indices, codebook_size: int, mask=None):
    """How often each code is used: (...) int indices -> (codebook_size,) float32 counts."""
    idx = jnp.asarray(indices).reshape(-1)
    weights = jnp.ones(idx.shape, jnp.float32) if mask is None else jnp.asarray(mask, jnp.float32).reshape(-1)
    return jax.ops.segment_sum(weights, idx, num_segments=codebook_size)


@jax.jit
def codebook_perplexity(counts):
    """``exp(entropy)`` of the code distribution; (K,) counts -> scalar in [1, K] (as RepCodec's metric)."""
    counts = jnp.asarray(counts, jnp.float32)
    prob = counts / jnp.maximum(jnp.sum(counts), 1e-30)
    return jnp.exp(-jnp.sum(prob * jnp.log(prob + 1e-10)))


def usage_fraction(counts, threshold: float = 1.0):
    """Fraction of codes used at least ``threshold`` times."""
    return jnp.mean((jnp.asarray(counts) >= threshold).astype(jnp.float32))


@functools.partial(jax.jit, static_argnames=("metric",))
def quantization_error(features, codebook, metric: str = "cosine"):
    """Mean squared error between (N, d) features and their nearest codes (in the metric's space:
    unit-normalised vectors for cosine, so the error is ``2 - 2 cos``)."""
    _check_metric(metric)
    points = _prepare_points(features, metric)
    codes = l2_normalize(codebook) if metric == "cosine" else jnp.asarray(codebook, jnp.float32)
    idx = _assign(points, codebook, metric)
    return jnp.mean(jnp.sum(jnp.square(points - codes[idx]), axis=-1))


def random_valid_rows(key, valid: jax.Array, count: int) -> tuple[jax.Array, jax.Array]:
    """``count`` random indices of True entries of ``valid`` (N,) bool, and how many there are.

    Distinct while there are at least ``count`` valid rows (sampling without replacement, by
    Gumbel top-k); with fewer, the draws repeat cyclically. With no valid row the indices are
    arbitrary: check the returned count (a () int array). Jittable; ``count`` is static.
    """
    valid = jnp.asarray(valid).reshape(-1).astype(bool)
    n_valid = valid.sum()
    scores = jnp.where(valid, jax.random.gumbel(key, valid.shape), -jnp.inf)
    order = jnp.argsort(-scores)  # valid rows first, in random order
    return order[jnp.arange(count) % jnp.maximum(n_valid, 1)], n_valid


@functools.partial(jax.jit, static_argnames=("threshold",))
def replace_dead_codes(key, codebook, counts, features, threshold: float = 1.0, mask=None):
    """Re-initialise codes used fewer than ``threshold`` times with random features.

    codebook (K, d), counts (K,) (e.g. :func:`code_usage` over recent batches, or an EMA),
    features (N, d) (any leading dims), mask (N,) (same leading dims) or None: only valid rows
    are drawn. Each dead code gets a distinct random valid row while there are at least K valid
    rows (sampling without replacement, by Gumbel top-k); with fewer, the draws repeat cyclically.
    With no valid row at all the codebook is returned unchanged. Returns
    ``(new_codebook, dead_mask (K,) bool)``.
    """
    codebook = jnp.asarray(codebook)
    points = jnp.asarray(features, codebook.dtype).reshape(-1, codebook.shape[-1])
    n, k = points.shape[0], codebook.shape[0]
    valid = jnp.ones((n,), bool) if mask is None else jnp.asarray(mask).reshape(-1).astype(bool)
    picks, n_valid = random_valid_rows(key, valid, k)
    dead = (jnp.asarray(counts) < threshold) & (n_valid > 0)
    return jnp.where(dead[:, None], points[picks], codebook), dead
