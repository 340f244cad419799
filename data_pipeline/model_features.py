"""Frozen-model features for preprocessing: w2v-BERT semantic features, semantic codes, CAMPPlus style.

:class:`ModelFeatures` loads a model once (any path :func:`indextts2_jax.convert.official.load_assets`
accepts: an official model directory, a converted checkpoint or a bundle), keeps only the three frozen
front-end components (w2v-BERT layers ``0..get_emb_hidden_index-1``, the semantic codec, CAMPPlus), and
builds its jitted functions once. It follows infer_v2's speaker-prompt path (spec §4.1, §4.3, §4.4, §6,
§11 step 2) on the 16 kHz audio that preprocessing derives from the 22.05 kHz waveform with torchaudio's
sinc resampler (the whole utterance: infer_v2's 15 s cut applies to prompts, not to training targets):

* ``semantic``: SeamlessM4T features -> w2v-BERT ``hidden_states[get_emb_hidden_index]`` (17 of 24 at full
  size) -> ``(h - mean) / sqrt(var)`` -> (T, 1024) float32, and optionally the codec's ``quantize`` codes
  (T,) int32. Utterances are batched: rows padded to a power of two (at most ``batch_size``), frames to a
  multiple of ``frame_bucket``; the w2v-BERT attention mask and the codec mask make every row equal to
  that utterance run alone (checked by ``tests/test_preprocess_models.py``). T is the number of valid
  stacked frames, ``attention_mask.sum()`` = floor(F / 2) for F fbank frames (as
  ``semantic_codec.encode_to_codes`` and the inference pipeline count them).
* ``style``: Kaldi fbank of the float 16 kHz audio minus its time mean -> CAMPPlus -> (192,) float32.
  The CAMPPlus module has no padding mask (its convolutions, segment pooling and statistics pooling
  see every frame), and compiling it costs seconds per input length, so batches run it padded under
  :func:`masked_campplus`: a Flax method interceptor zeroes every convolution's input beyond each
  utterance's true length (so the convolutions see what the official zero padding gives them) and
  replaces the CAM context means and the statistics pooling by their masked versions. The result
  equals the utterance run alone at its exact length (float32 rounding, checked by the tests);
  compiles are bounded by the row count x ``style_frame_bucket`` buckets.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["ModelFeatures", "prepare_model", "masked_campplus"]


def _pow2_at_most(n: int, cap: int) -> int:
    rows = 1
    while rows < n:
        rows *= 2
    return min(max(rows, 1), max(cap, n))


def _bucket(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


def _length_groups(lengths: Sequence[int], batch_size: int, multiple: int = 1):
    """Yield ``(indices, rows)``: the items sorted by length in groups of ``batch_size`` (similar lengths pad
    least), each group padded to ``rows`` (a power of two, at most ``batch_size``: few compiled shapes; then
    a multiple of ``multiple``, the devices the rows are split over)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield idx, _bucket(_pow2_at_most(len(idx), batch_size), multiple)


def _time_mask(n: int, lengths, dtype):
    import jax.numpy as jnp

    return (jnp.arange(n)[None, :] < lengths[:, None]).astype(dtype)  # (B, n)


def masked_campplus(model, variables, fbank, lengths):
    """``model.apply(variables, fbank)`` for a zero-padded batch, each row as if run alone at its length.

    Args:
        model: a ``campplus.CAMPPlus`` (inference, ``train=False``).
        fbank: (B, L, F) float32, rows padded after their ``lengths`` frames (values there are unused).
        lengths: (B,) int true frame counts (>= 1).
    Returns:
        (B, E) embeddings.

    How: CAMPPlus is per-frame except for (a) convolutions along time, (b) the CAM layers' context
    (time mean + 100-frame segment means) and (c) the final statistics pooling. (a) Every ``nn.Conv``
    input is zeroed beyond the true length of its time resolution (L frames before the stride-2 TDNN,
    ``(L - 1) // 2 + 1`` after it), which is what the official zero padding feeds the valid outputs.
    (b) and (c) are recomputed over the valid frames only, at the layers that consume them
    (``cam_layer.linear1`` and ``dense_linear``).
    """
    import flax.linen as nn
    import jax.numpy as jnp

    from indextts2_jax.models import campplus as camp

    lengths = jnp.asarray(lengths, jnp.int32)
    b, full = fbank.shape[0], fbank.shape[1]
    by_size = {full: lengths, (full - 1) // 2 + 1: (lengths - 1) // 2 + 1}  # FCM/TDNN input, after the TDNN
    stash: dict[str, Any] = {}

    def valid_of(n):
        if n not in by_size:
            raise ValueError(f"masked_campplus: unexpected time length {n} (known {sorted(by_size)})")
        return by_size[n]

    def masked_stats(x):
        t = x.shape[1]
        n = valid_of(t)
        m = _time_mask(t, n, jnp.float32)[..., None]
        x32 = x.astype(jnp.float32)
        mean = jnp.sum(x32 * m, axis=1) / n[:, None]
        var = jnp.sum(((x32 - mean[:, None]) * m) ** 2, axis=1) / (n[:, None] - 1)
        return mean, var

    def masked_context(x):
        t = x.shape[1]
        n = valid_of(t)
        m = _time_mask(t, n, x.dtype)[..., None]
        xm = x * m
        mean = jnp.sum(xm, axis=1, keepdims=True) / n[:, None, None].astype(x.dtype)
        seg = camp.SEGMENT_FRAMES
        n_seg = -(-t // seg)
        sums = jnp.pad(xm, ((0, 0), (0, n_seg * seg - t), (0, 0))).reshape(b, n_seg, seg, -1).sum(axis=2)
        counts = jnp.clip(n[:, None] - seg * jnp.arange(n_seg)[None, :], 1, seg).astype(x.dtype)
        seg_means = jnp.repeat(sums / counts[..., None], seg, axis=1)[:, :t]
        return mean + seg_means

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        parent = module.parent
        if isinstance(module, nn.Conv):
            x = args[0]
            axis = 2 if x.ndim == 4 else 1  # FCM maps are (B, F, T, C); TDNN/CAM inputs (B, T, C)
            m = _time_mask(x.shape[axis], valid_of(x.shape[axis]), x.dtype)
            m = m[:, None, :, None] if x.ndim == 4 else m[..., None]
            return next_fun(x * m, *args[1:], **kwargs)
        if isinstance(module, camp.CAMLayer):
            stash[module.path] = masked_context(args[0])
            return next_fun(*args, **kwargs)
        if isinstance(module, nn.Dense) and isinstance(parent, camp.CAMLayer) and module.name == "linear1":
            return next_fun(stash.pop(parent.path), *args[1:], **kwargs)
        if isinstance(module, nn.BatchNorm) and isinstance(parent, camp.CAMPPlus) and module.name == "out_nonlinear":
            out = next_fun(*args, **kwargs)
            stash["pooled"] = nn.relu(out.astype(module.dtype or out.dtype))
            return out
        if isinstance(module, nn.Dense) and isinstance(parent, camp.CAMPPlus) and module.name == "dense_linear":
            mean, var = masked_stats(stash.pop("pooled"))
            stats = jnp.concatenate([mean, jnp.sqrt(var)], axis=-1)
            return next_fun(stats.astype(args[0].dtype), *args[1:], **kwargs)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        out = model.apply(variables, fbank)
    if stash:
        raise RuntimeError(f"masked_campplus: CAMPPlus layers were not all intercepted ({sorted(stash)}); "
                           "models/campplus.py changed its structure")
    return out


def prepare_model(path: str | os.PathLike) -> None:
    """Make sure ``path`` loads before worker processes start.

    An official model directory is converted once here (filling its ``jax_cache``), so that parallel
    workers read the cache instead of converting concurrently. No weights are read (``components=()``):
    the workers read theirs. Raises what ``load_assets`` raises.
    """
    from pathlib import Path

    from indextts2_jax.convert.official import load_assets

    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"--model {str(path)!r} does not exist")
    load_assets(root, components=())


class ModelFeatures:
    """The frozen front-end models of one IndexTTS-2 checkpoint, ready for batched feature extraction.

    Args:
        model_path: official model dir / converted checkpoint / bundle (see ``load_assets``), or loaded
            :class:`~indextts2_jax.infer.assets.ModelAssets`.
        semantic: load w2v-BERT (and the normalization stats); codec: also the semantic codec;
        style: CAMPPlus. A model with the demo's stacked-mel front end (``front_end == "mel"``) has no
            w2v-BERT: there ``semantic`` is ignored and :meth:`codes` reads the stacked log-mel.
        batch_size: most utterances per w2v-BERT / CAMPPlus call. frame_bucket: stacked frames are padded
            to a multiple of it (bounds recompiles; ~1.3 s of audio per step at 50 Hz for 64).
            style_frame_bucket: the same for the CAMPPlus fbank frames (100 Hz).
        dtype: compute dtype of w2v-BERT and the codec encoder (float32 = official; the code argmax
            and the normalization stay float32).
        devices: how many of this process's devices each batch is split over (data parallel: the weights
            replicated, the rows sharded; None: all local devices). Rows are padded to a multiple of it; every
            row's result is the same as on one device.
    """

    def __init__(self, model_path: str | os.PathLike, *, semantic: bool = True, codec: bool = True,
                 style: bool = True, batch_size: int = 8, frame_bucket: int = 64, style_frame_bucket: int = 128,
                 dtype: str = "float32", devices: int | None = 1):
        import jax
        import jax.numpy as jnp
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        from indextts2_jax.convert.official import component_configs, load_assets
        from indextts2_jax.errors import ConfigError
        from indextts2_jax.infer.assets import ModelAssets
        from indextts2_jax.infer.configs import semantic_front_end
        from indextts2_jax.models import campplus, semantic_codec, w2v_bert

        def needed(config) -> list[str]:  # only these params are read from disk
            w2v = (semantic or codec) and semantic_front_end(config) == "w2v_bert"
            return [n for n, use in (("w2v_bert", w2v), ("semantic_codec", codec), ("campplus", style)) if use]

        if isinstance(model_path, ModelAssets):
            assets = model_path
        elif not model_path:
            raise ConfigError("model features need a model (--model PATH)")
        else:
            assets = load_assets(model_path, components=needed)
        self.source = assets.source or str(model_path)
        cc = component_configs(assets.config)
        self.front_end = cc.semantic_features  # "w2v_bert" (official) or "mel" (the demo's stand-in)
        self.code_rate = cc.semantic_rate  # codes per second of audio
        if self.front_end == "mel":
            cc.check_front_end()
            semantic = False
            self.mel_config = assets.config.model.s2mel.preprocess_params
        local = jax.local_devices()
        self.num_devices = len(local) if devices is None else int(devices)
        if not 1 <= self.num_devices <= len(local):
            raise ConfigError(f"devices={devices}: this process has {len(local)} local devices")
        mesh = Mesh(np.array(local[: self.num_devices]), ("data",))
        self._replicated = NamedSharding(mesh, PartitionSpec())
        self._row_sharding = NamedSharding(mesh, PartitionSpec("data"))
        self.batch_size = max(1, int(batch_size))
        self.frame_bucket = max(1, int(frame_bucket))
        self.style_frame_bucket = max(8, int(style_frame_bucket))
        compute = jnp.dtype(dtype)
        self.w2v_config = cc["w2v_bert"]
        self.codec_config = cc["semantic_codec"]
        self.campplus_config = cc["campplus"]
        self._embed = self._quantize = self._campplus = None
        self.w2v_params = self.codec_params = self.campplus_variables = None

        if (semantic or codec) and self.front_end == "w2v_bert":
            n = self.w2v_config.layers_for_embedding
            params = dict(assets.params["w2v_bert"])
            layers = params.get("encoder", {})
            missing = [i for i in range(n) if f"layers_{i}" not in layers]
            if missing:
                raise ConfigError(f"{self.source}: w2v-BERT params lack layers {missing} (need 0..{n - 1})")
            params["encoder"] = {f"layers_{i}": layers[f"layers_{i}"] for i in range(n)}
            self.w2v_params = jax.device_put(params, self._replicated)
            self.mean, self.var = (jax.device_put(np.asarray(assets.w2v_stats[k], np.float32), self._replicated)
                                   for k in ("mean", "var"))
            w2v_model = w2v_bert.W2VBert(self.w2v_config, num_layers=n, dtype=compute)

            def embed(params, mean, var, feats, mask):
                hidden = w2v_model.apply({"params": params}, feats, mask, return_all=False)
                return w2v_bert.normalize_hidden(hidden, mean, var)

            self._embed = jax.jit(embed)
        if codec:
            self.codec_params = jax.device_put(assets.params["semantic_codec"], self._replicated)
            codec_model = semantic_codec.SemanticCodec(self.codec_config, dtype=compute)

            def quantize(params, hidden, mask):
                codes, _ = codec_model.apply({"params": params}, hidden, mask,
                                             method=semantic_codec.SemanticCodec.quantize)
                return codes

            self._quantize = jax.jit(quantize)
        if style:
            self.campplus_variables = jax.device_put(assets.params["campplus"], self._replicated)
            camp_model = campplus.CAMPPlus(self.campplus_config)

            def embed_style(variables, fbank, lengths):
                return masked_campplus(camp_model, variables, fbank, lengths)

            self._campplus = jax.jit(embed_style)
        del assets

    # ------------------------------------------------------------------------------------------
    def semantic(self, waves_16k: Sequence[np.ndarray], codes: bool = False, features: bool = True
                 ) -> list[tuple[np.ndarray | None, np.ndarray | None]]:
        """Per waveform ``(features (T, H) float32, codes (T,) int32 or None)``, in input order; ``features=False``
        leaves the features on the device (None; for a caller that wants only the codes)."""
        from indextts2_jax.audio import w2v_bert_features

        if self.front_end == "mel":
            from indextts2_jax.errors import ConfigError

            raise ConfigError(f"{self.source}: this model reads the demo's stacked log-mel, not w2v-BERT features "
                              "(its semantic_features is 'mel'): use the mel_stacked feature, or codes()")
        if self._embed is None:
            raise RuntimeError("ModelFeatures was built with semantic=False")
        if codes and self._quantize is None:
            raise RuntimeError("ModelFeatures was built with codec=False")
        waves = [np.asarray(w, np.float32).reshape(-1) for w in waves_16k]
        out: list[Any] = [None] * len(waves)
        for idx, rows in _length_groups([w.shape[0] for w in waves], self.batch_size, self.num_devices):
            feats, mask = w2v_bert_features([waves[i] for i in idx])
            t = _bucket(feats.shape[1], self.frame_bucket)
            feats_p = np.ones((rows, t, feats.shape[2]), np.float32)  # the extractor's padding value
            mask_p = np.zeros((rows, t), np.int32)
            feats_p[: len(idx), : feats.shape[1]] = feats
            mask_p[: len(idx), : feats.shape[1]] = mask
            mask_p[len(idx):, 0] = 1  # dummy rows: one valid frame keeps their softmax defined
            feats_p, mask_p = self._rows(feats_p, mask_p)
            hidden = self._embed(self.w2v_params, self.mean, self.var, feats_p, mask_p)
            code_arr = np.asarray(self._quantize(self.codec_params, hidden, mask_p)) if codes else None
            hidden = np.asarray(hidden, np.float32) if features else None
            for row, i in enumerate(idx):
                n = int(mask[row].sum())
                c = None if code_arr is None else np.ascontiguousarray(code_arr[row, :n], np.int32)
                out[i] = (None if hidden is None else np.ascontiguousarray(hidden[row, :n]), c)
        return out

    def _rows(self, *arrays):
        """Host batches onto the devices, split by rows (the leading axis)."""
        import jax

        return tuple(jax.device_put(a, self._row_sharding) for a in arrays)

    def codes(self, waves_22k: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per 22.05 kHz waveform its semantic codes ``(T,)`` int32, in input order: what the GPT predicts.

        The front end of the model: w2v-BERT on the waveform resampled to 16 kHz (infer_v2's speaker-prompt
        path, ``audio.load_speaker_prompt``; :meth:`semantic`), or the demo's stacked log-mel (two 22.05 kHz
        mel frames per code, as ``data_pipeline.preprocess`` computes ``mel_stacked``); then the codec's
        ``quantize``. Batched like :meth:`semantic` (rows sorted by length, padded and masked); each row's
        codes equal those of the waveform run alone (``IndexTTS2.semantic_codes``).
        """
        from indextts2_jax.audio import resample_22k_to_16k

        if self._quantize is None:
            raise RuntimeError("ModelFeatures was built with codec=False")
        waves = [np.asarray(w, np.float32).reshape(-1) for w in waves_22k]
        if self.front_end == "w2v_bert":
            return [c for _, c in self.semantic([resample_22k_to_16k(w) for w in waves], codes=True, features=False)]
        from indextts2_jax.infer.pipeline import stacked_mel_features

        feats = [stacked_mel_features(w, self.mel_config) for w in waves]
        out: list[Any] = [None] * len(feats)
        for idx, rows in _length_groups([f.shape[0] for f in feats], self.batch_size, self.num_devices):
            t = _bucket(max(feats[i].shape[0] for i in idx), self.frame_bucket)
            batch = np.zeros((rows, t, feats[idx[0]].shape[1]), np.float32)
            mask = np.zeros((rows, t), np.int32)
            mask[len(idx):, 0] = 1  # dummy rows: one valid frame
            for row, i in enumerate(idx):
                batch[row, : feats[i].shape[0]] = feats[i]
                mask[row, : feats[i].shape[0]] = 1
            code_arr = np.asarray(self._quantize(self.codec_params, *self._rows(batch, mask)))
            for row, i in enumerate(idx):
                out[i] = np.ascontiguousarray(code_arr[row, : feats[i].shape[0]], np.int32)
        return out

    def style(self, waves_16k: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Per waveform the CAMPPlus embedding ``(E,)`` float32 (E = 192 at full size), in input order.

        Batched and padded through :func:`masked_campplus` (equal to each utterance run alone).
        """
        from indextts2_jax.audio import campplus_features, fbank_num_frames
        from indextts2_jax.errors import AudioTooShortError

        if self._campplus is None:
            raise RuntimeError("ModelFeatures was built with style=False")
        waves = [np.asarray(w, np.float32).reshape(-1) for w in waves_16k]
        for w in waves:
            if fbank_num_frames(w.shape[0]) < 3:  # the pooled std needs >= 2 frames after the stride-2 TDNN
                raise AudioTooShortError(f"CAMPPlus needs at least 3 fbank frames (720 samples), got {w.shape[0]}")
        out: list[Any] = [None] * len(waves)
        for idx, rows in _length_groups([w.shape[0] for w in waves], self.batch_size, self.num_devices):
            longest = max(waves[i].shape[0] for i in idx)
            frames = _bucket(fbank_num_frames(longest), self.style_frame_bucket)
            n_samples = max(longest, 400 + 160 * (frames - 1))  # exactly `frames` fbank frames
            batch = np.zeros((rows, n_samples), np.float32)
            lengths = np.full(rows, n_samples, np.int64)  # dummy rows: all zeros, full length
            for row, i in enumerate(idx):
                batch[row, : waves[i].shape[0]] = waves[i]
                lengths[row] = waves[i].shape[0]
            fbank = campplus_features(batch, lengths)
            frames_of = np.asarray(fbank_num_frames(lengths), np.int32)
            emb = np.asarray(self._campplus(self.campplus_variables, *self._rows(np.asarray(fbank), frames_of)),
                             np.float32)
            for row, i in enumerate(idx):
                out[i] = np.ascontiguousarray(emb[row])
        return out
