"""The ``codec`` stage: VQ training of the semantic codec (RepCodec, one factorized VQ).

Input: ``semantic_features`` (B, L, H) + ``semantic_lengths`` from the codec pipeline (w2v-BERT
hidden states officially, stacked mel frames in the demo, ``demo.semantic_features="mel"``).

Loss (per batch, over valid frames only): ``reconstruction_weight * rec + commit + codebook + dead``

* ``rec``: L1 or L2 (``config.codec.reconstruction_loss``) between the decoder output and the input
  features, mean over valid frames and channels;
* ``commit`` / ``codebook``: RepCodec's FVQ losses (``SemanticCodecConfig.commitment`` 0.15,
  ``codebook_loss_weight`` 1.0; :func:`indextts2_jax.nn.vq.vq_losses`);
* ``dead``: dead-code revival. Codes used fewer than ``codec.dead_code_threshold`` times in the batch
  are pulled (squared distance, weight ``codec.dead_code_weight``) toward randomly drawn projected
  features of the batch (drawn with the step's ``fold_in(rng, step)`` key, so a resumed run draws
  the same). It is a loss term, i.e. part of the jitted step and a pure function of params, batch
  and step key.
* hard replacement (``codec.dead_code_replace_every`` N > 0): after every N-th update, codes that
  the updated model leaves unused in the batch (fewer than ``dead_code_threshold`` frames) are set
  to distinct random valid projected latents ``z_e`` of the batch (:func:`vq.replace_dead_codes`,
  through the trainer's ``post_update`` hook; same step key on every host and on resume). Without
  it a k-means-initialised codebook on an encoder that is still learning collapses to a handful of
  codes within ~10 steps (demo: 9 of 256 codes in use after 300 steps, perplexity 2.5).

Input statistics (``semantic_codec.input_norm``, the demo on log-mel frames): per-channel mean and
std of the same frames as the k-means (at least one batch), stored as the codec's constant params
``input_mean``/``input_std``; the reconstruction is compared in the normalized space.

Initialization: the codebook is k-means(++) of the projected features ``in_project(encoder(x))``
of the first ``codec.kmeans_batches`` global train batches under the freshly initialized encoder
(spherical k-means, the codec's cosine search). It runs inside the jitted init, from the same
data on every host, and is not redone on resume (the checkpoint holds the trained codebook).

Metrics: ``reconstruction``, ``commit_loss``, ``codebook_loss``, ``dead_code_loss``,
``code_usage`` (fraction of codes used in the batch), ``perplexity`` (exp entropy of the batch's
code distribution), ``dead_codes`` (count).

Export for the GPT stage: :func:`export_codec_params` writes the trained params as flax msgpack
(``codec_params.msgpack``); set ``config.codec_checkpoint`` of the GPT stage to it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from indextts2_jax.errors import ConfigError
from indextts2_jax.models.semantic_codec import SemanticCodec, SemanticCodecConfig
from indextts2_jax.nn import vq
from indextts2_jax.train.tasks import PipelineTask

CODEC_PARAMS_FILE = "codec_params.msgpack"


def codec_config_from(config) -> SemanticCodecConfig:
    """The codec's config from ``config.model.semantic_codec`` (official keys), with the decoder."""
    return SemanticCodecConfig.from_official(dict(config.model.semantic_codec))


def compute_dtype(config):
    name = str(config.get("compute_dtype", "float32"))
    if name not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"compute_dtype={name!r}: expected float32, bfloat16 or float16")
    return jnp.dtype(name)


def frame_mask(batch: Mapping[str, jax.Array], length_key: str = "semantic_lengths") -> jax.Array:
    """(B, L) bool: frames before each row's length, in valid rows."""
    feats = batch["semantic_features"]
    mask = jnp.arange(feats.shape[1])[None, :] < batch[length_key][:, None]
    return mask & batch["valid"].astype(bool)[:, None]


def dead_code_pull(key, codebook: jax.Array, z_e: jax.Array, counts: jax.Array, mask: jax.Array,
                   threshold: float) -> tuple[jax.Array, jax.Array]:
    """Squared distance of each dead code (count < threshold) to a random valid latent (stop-gradient).

    codebook (K, d), z_e (B, L, d), counts (K,), mask (B, L). Returns (mean over dead codes, #dead).
    """
    k, d = codebook.shape
    flat = jax.lax.stop_gradient(z_e.reshape(-1, d).astype(jnp.float32))
    picks, _ = vq.random_valid_rows(key, mask, k)  # distinct frames while there are >= K
    target = vq.l2_normalize(flat[picks])  # codes are compared by direction; k-means codes are unit
    dead = (counts < threshold).astype(jnp.float32)
    dist = jnp.sum(jnp.square(codebook.astype(jnp.float32) - target), axis=-1)
    n_dead = dead.sum()
    return jnp.sum(dist * dead) / jnp.maximum(n_dead, 1.0), n_dead


class CodecTask(PipelineTask):
    name = "codec"

    def __init__(self, config):
        super().__init__(config)
        self.codec_config = codec_config_from(config)
        if not self.codec_config.with_decoder:
            raise ConfigError("the codec stage trains the reconstruction: semantic_codec needs the decoder")
        self.model = SemanticCodec(self.codec_config, dtype=compute_dtype(config))
        cc = config.codec
        if str(cc.reconstruction_loss) not in ("l1", "l2"):
            raise ConfigError(f"codec.reconstruction_loss={cc.reconstruction_loss!r}: expected 'l1' or 'l2'")
        self._kmeans_points: np.ndarray | None = None

    # -- init -----------------------------------------------------------------------------------
    def kmeans_points(self) -> np.ndarray:
        """(N, 2, L... ) -> the valid frames (N, H) of the first ``kmeans_batches`` global batches."""
        if self._kmeans_points is None:
            n = int(self.config.codec.kmeans_batches)
            if self.codec_config.input_norm:
                n = max(n, 1)  # the input statistics come from these frames too
            frames = []
            for b in self.first_batches(n) if n > 0 else []:
                lengths = np.where(b["valid"], b["semantic_lengths"], 0)
                for row, length in enumerate(lengths):
                    frames.append(np.asarray(b["semantic_features"][row, :length], np.float32))
            self._kmeans_points = np.concatenate(frames) if frames else np.zeros((0, self.codec_config.hidden_size),
                                                                                np.float32)
        return self._kmeans_points

    def example_batch(self):
        self.kmeans_points()  # gather the k-means data before init (same on every host)
        return super().example_batch()

    def init_params(self, rng, batch):
        init_rng, kmeans_rng = jax.random.split(rng)
        feats = batch["semantic_features"]
        variables = self.model.init(init_rng, jnp.zeros((1,) + feats.shape[1:], jnp.float32))
        params = variables["params"]
        points = self.kmeans_points()
        k = self.codec_config.codebook_size
        if self.codec_config.input_norm:  # constants from the data (the encoder sees ~zero-mean unit-std input)
            params = dict(params)
            for name, value in (("input_mean", points.mean(0)), ("input_std", np.maximum(points.std(0), 1e-3))):
                box = params[name]
                value = jnp.asarray(value, jnp.float32)
                params[name] = box.replace_boxed(value) if isinstance(box, nn.Partitioned) else value
        if int(self.config.codec.kmeans_batches) <= 0:
            return params
        if points.shape[0] < k:
            raise ConfigError(f"k-means init of {k} codes needs at least {k} frames; the first "
                              f"{self.config.codec.kmeans_batches} batches hold {points.shape[0]} (raise "
                              "codec.kmeans_batches or set it to 0 for a random codebook)")
        plain = nn.unbox(params)
        out = self.model.apply({"params": plain}, jnp.asarray(points)[None], method=SemanticCodec.quantize_details)
        codebook, _, _ = vq.kmeans(kmeans_rng, out["z_e"][0], k, int(self.config.codec.kmeans_iters), "cosine")
        box = params["quantizer"]["codebook"]
        new_box = box.replace_boxed(codebook.astype(box.value.dtype)) if isinstance(box, nn.Partitioned) else codebook
        params = dict(params)
        params["quantizer"] = dict(params["quantizer"], codebook=new_box)
        return params

    # -- loss -----------------------------------------------------------------------------------
    def loss_fn(self, params, batch, rng, train: bool = True):
        cc = self.config.codec
        feats = batch["semantic_features"].astype(jnp.float32)
        mask = frame_mask(batch)
        out = self.model.apply({"params": params}, feats, mask)
        diff = out["reconstruction"].astype(jnp.float32) - out["target"].astype(jnp.float32)
        err = jnp.abs(diff) if str(cc.reconstruction_loss) == "l1" else jnp.square(diff)
        m = mask.astype(jnp.float32)
        rec = jnp.sum(jnp.mean(err, -1) * m) / jnp.maximum(m.sum(), 1.0)
        counts = vq.code_usage(out["codes"], self.codec_config.codebook_size, mask)
        codebook = params["quantizer"]["codebook"]
        dead_loss, n_dead = dead_code_pull(rng, codebook, out["z_e"], counts, mask, float(cc.dead_code_threshold))
        loss = float(cc.reconstruction_weight) * rec + out["commit_loss"] + out["codebook_loss"]
        if float(cc.dead_code_weight) > 0 and train:
            loss = loss + float(cc.dead_code_weight) * dead_loss
        metrics = {"reconstruction": rec, "commit_loss": out["commit_loss"], "codebook_loss": out["codebook_loss"],
                   "dead_code_loss": dead_loss, "dead_codes": n_dead, "code_usage": vq.usage_fraction(counts),
                   "perplexity": vq.codebook_perplexity(counts)}
        return loss, metrics

    def post_update(self, params, batch, rng, step):
        every = int(self.config.codec.get("dead_code_replace_every", 0))
        if every <= 0:
            return params
        threshold = float(self.config.codec.dead_code_threshold)

        def replace(p):
            feats = batch["semantic_features"].astype(jnp.float32)
            mask = frame_mask(batch)
            out = self.model.apply({"params": p}, feats, mask, method=SemanticCodec.quantize_details)
            codebook = p["quantizer"]["codebook"]
            counts = vq.code_usage(out["codes"], codebook.shape[0], mask)
            z_e = jax.lax.stop_gradient(out["z_e"]).astype(codebook.dtype)
            new, _ = vq.replace_dead_codes(rng, codebook, counts, z_e, threshold, mask)
            return {**p, "quantizer": {**p["quantizer"], "codebook": new}}

        return jax.lax.cond((step + 1) % every == 0, replace, lambda p: p, params)

    def flops_per_step(self, batch, num_params: int) -> float:
        # convolutional/dense net over every frame: ~6 * params * frames (padding included)
        feats = batch["semantic_features"]
        return 6.0 * num_params * feats.shape[0] * feats.shape[1]


# -- export ------------------------------------------------------------------------------------
def latest_params(workdir: str | os.PathLike) -> tuple[int, Any]:
    """(step, params) of the latest checkpoint of a training run in ``workdir`` (NumPy arrays)."""
    import orbax.checkpoint as ocp

    ckpt = Path(workdir) / "checkpoints"
    mngr = ocp.CheckpointManager(str(ckpt.resolve()), item_names=("state", "data"))
    step = mngr.latest_step()
    if step is None:
        raise FileNotFoundError(f"{ckpt}: no checkpoint to export")
    state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    mngr.close()
    return int(step), jax.tree.map(np.asarray, state["params"])


def save_params(params: Any, path: str | os.PathLike) -> Path:
    """Write a params tree as flax msgpack (the project's params-file format); atomic."""
    from flax import serialization

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(serialization.msgpack_serialize(jax.tree.map(np.asarray, params)))
    os.replace(tmp, path)
    return path


def load_params(path: str | os.PathLike) -> Any:
    from flax import serialization

    return serialization.msgpack_restore(Path(path).read_bytes())


def export_codec_params(workdir: str | os.PathLike, out_path: str | os.PathLike | None = None) -> Path:
    """The latest codec checkpoint of ``workdir`` -> ``<workdir>/codec_params.msgpack`` (or ``out_path``).

    The GPT stage reads it through ``config.codec_checkpoint`` (frozen codec, codes in the step).
    """
    _, params = latest_params(workdir)
    return save_params(params, out_path or Path(workdir) / CODEC_PARAMS_FILE)
