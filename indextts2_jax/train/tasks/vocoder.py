"""The ``vocoder`` stage: BigVGAN v2 GAN training (generator + MPD + multi-scale sub-band CQT discriminator).

Batch (vocoder pipeline, random crops of ``vocoder.segment_frames`` mel frames): ``mel`` (B, L, 80) +
``mel_lengths``, the aligned ``wave`` (B, 256 L) float32 + ``wave_lengths``, ``valid`` (B,).

Params: ``{"generator": <BigVGAN params>, "discriminator": <VocoderDiscriminator params>}``. The
generator's tree is :func:`indextts2_jax.models.bigvgan.from_torch`'s layout; with
``vocoder.weight_norm`` (the default, as the official training) every conv is weight-normed
(``kernel`` = direction v, ``gain`` = norm g: ``from_torch(..., weight_norm=True)``'s layout), and
:func:`export_generator_params` folds it back into the plain inference layout. Both trees carry
logical axis names (conv kernels ``("kernel", "conv_in", "conv_out")``), so they shard like the
other stages.

One step, one loss (the generic trainer takes one ``loss_fn`` and one optax transform):

* one generator forward ``fake = G(mel)`` (B, T);
* discriminator loss ``L_D``: the discriminators on ``concat([real, stop_gradient(fake)])``,
  LSGAN ``sum_d mean((1 - D(real))^2) + mean(D(fake)^2)``;
* generator loss ``L_G = lambda_adv * sum_d mean((1 - D(fake))^2) + lambda_fm * feature matching
  + lambda_mel * multi-scale mel L1`` with the discriminator params under ``stop_gradient``; the real
  feature maps for feature matching are the D pass's (the same values: same params, same input);
* ``total = L_D + L_G``: its gradient w.r.t. the generator is grad ``L_G`` and w.r.t. the
  discriminators grad ``L_D``.

Mel-only warm-up (``vocoder.discriminator_start_step`` = N > 0; 0, the default, is the official
training): the steps before N are the task's phase 0 (:meth:`VocoderTask.phase_starts`; the trainer
compiles a step per phase), which skips the discriminators: no discriminator pass, a generator step on
``lambda_mel * mel L1`` alone, zero gradients for the discriminators (whose AdamW weight decay still
applies), as ParallelWaveGAN's ``discriminator_train_start_steps``. From step N on (phase 1), and always
in evaluation, the full GAN losses. A generator from scratch learns the mel mapping ~3x faster per second
without the discriminator passes (see ``configs/demo.py``).

Unlike the official alternating update (D steps first, then G is scored by the *updated* D), the
generator and the discriminators see the same discriminator params within a step (a simultaneous
update); the D forward on the real half is shared instead of recomputed. Rows with ``valid`` False
(batch padding) carry no loss: every term is a per-row loss averaged over the valid rows. Mel frames
past ``mel_lengths`` (short utterances padded to the crop) are set to the log-mel of silence
(``log(1e-5)``), matching the zero-padded waveform there, as the official data loader pads the audio
before computing its mel.

Optimizer (:meth:`VocoderTask.make_optimizer`): AdamW per part (BigVGAN: betas 0.8/0.99, weight decay
0.01 on every param, lr decayed by ``lr_decay`` per step); gradients clipped by global norm separately
for the generator, the MPD and the CQTD (or MRD), as the official code; ``config.freeze`` regexes
and ``grad_accum_steps`` apply as in the default optimizer. ``learning_rate`` logs the generator's.

Metrics: ``adversarial`` (1 when the discriminators took part in the step, 0 in the warm-up),
``d_loss`` (``d_real`` + ``d_fake``), ``g_adv``, ``feature_matching``, ``mel_l1`` (the
unweighted multi-scale mel loss, the official "mel error"), ``g_loss``, ``total``; in evaluation also
``mel_error`` (L1 between the batch's 80-band log-mel and that of the generated audio, over valid
frames, the official validation metric). ``write_samples`` logs one generated validation clip
(``add_audio``) with its log-mel image next to the real ones.

Fine-tuning: ``config.init_from`` = an Orbax checkpoint holding the generator (:func:`prepare_init_from`
turns a converted official checkpoint or an official BigVGAN folder into one); the discriminators
start from scratch (the same init as a run from scratch with the same seed).
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from indextts2_jax.errors import ConfigError
from indextts2_jax.models.bigvgan import BigVGAN, BigVGANConfig, remove_weight_norm
from indextts2_jax.models.discriminators import DiscriminatorConfig, VocoderDiscriminator, split_real_fake
from indextts2_jax.train import vocoder_losses as vl
from indextts2_jax.train.optim import freeze_labels, param_path
from indextts2_jax.train.tasks import PipelineTask, converted_component_file, no_mesh, write_init_checkpoint
from indextts2_jax.train.tasks.codec import compute_dtype, latest_params, load_params, save_params

log = logging.getLogger("indextts2_jax.train")

GENERATOR_PARAMS_FILE = "bigvgan_params.msgpack"
HOP = 256  # samples per mel frame in the vocoder pipeline (data_pipeline.pipeline.STAGE_SPECS["vocoder"])
SILENCE_LOG_MEL = float(np.log(1e-5))


def generator_config_from(config) -> BigVGANConfig:
    """The generator's config from ``config.aux.bigvgan`` (official config.json keys)."""
    return BigVGANConfig.from_official(dict(config.aux.bigvgan))


def discriminator_config_from(config, sampling_rate: int) -> DiscriminatorConfig:
    """``config.vocoder.discriminator`` (official keys + ``cqtd_fmin``) -> :class:`DiscriminatorConfig`."""
    d = dict(config.vocoder.discriminator)
    fmin = d.pop("cqtd_fmin", None)
    d["sampling_rate"] = sampling_rate
    cfg = DiscriminatorConfig.from_official(d)
    return cfg.replace(cqtd_fmin=float(fmin)) if fmin is not None else cfg


def mel_loss_config_from(config, sampling_rate: int) -> vl.MelLossConfig:
    v = config.vocoder
    return vl.MelLossConfig(sampling_rate=sampling_rate, window_lengths=tuple(int(w) for w in v.mel_loss_windows),
                            n_mels=tuple(int(m) for m in v.mel_loss_mels))


def add_weight_norm(params: Mapping[str, Any]) -> dict:
    """Plain generator params -> the weight-normed layout (``gain`` = ``||kernel||``); inverse of
    :func:`~indextts2_jax.models.bigvgan.remove_weight_norm`. Convs are normalised per output channel,
    ``ups_*`` (transposed) per input channel, as torch's ``weight_norm`` on their official layouts."""

    def add(tree: Mapping[str, Any], transposed: bool) -> dict:
        out = {}
        for name, value in tree.items():
            if isinstance(value, Mapping):
                out[name] = add(value, name.startswith("ups_"))
            else:
                out[name] = value
        if "kernel" in tree and "gain" not in tree and not isinstance(tree["kernel"], Mapping):
            k = np.asarray(tree["kernel"], np.float64)
            axes = (0, 2) if transposed else (0, 1)
            out["gain"] = np.sqrt(np.sum(k * k, axis=axes)).astype(np.asarray(tree["kernel"]).dtype)
        return out

    return add(params, False)


def _is_weight_normed(generator_params: Mapping[str, Any]) -> bool:
    return "gain" in generator_params.get("conv_pre", {})


def _row_mean(fn, *trees):
    """Per-row values (B,) of a batch loss ``fn``: ``fn`` on each row (kept as a batch of one)."""
    return jax.vmap(lambda *rows: fn(*jax.tree.map(lambda a: a[None], rows)))(*trees)


def _masked_mean(rows: jax.Array, weights: jax.Array) -> jax.Array:
    return jnp.sum(rows * weights) / jnp.maximum(jnp.sum(weights), 1.0)


class VocoderTask(PipelineTask):
    name = "vocoder"

    def __init__(self, config):
        super().__init__(config)
        v = config.vocoder
        self.generator_config = generator_config_from(config)
        if self.generator_config.hop_length != HOP:
            raise ConfigError(f"aux.bigvgan up-samples by {self.generator_config.hop_length}, but the vocoder "
                              f"pipeline pairs each mel frame with {HOP} samples (prod(upsample_rates) must be {HOP})")
        sr = self.generator_config.sampling_rate
        self.discriminator_config = discriminator_config_from(config, sr)
        self.mel_loss_config = mel_loss_config_from(config, sr)
        self.segment_frames = int(v.segment_frames)
        if self.segment_frames <= 0:
            raise ConfigError(f"vocoder.segment_frames={self.segment_frames}: must be positive")
        self.dtype = compute_dtype(config)
        param_dtype = jnp.dtype(str(config.get("param_dtype", "float32")))
        self.weight_norm = bool(v.weight_norm)
        inits = {"official": 0.01, "fan_in": None}
        init = str(v.get("generator_init", "official"))
        if init not in inits:
            raise ConfigError(f"vocoder.generator_init={init!r}: expected one of {sorted(inits)}")
        self.generator = BigVGAN(self.generator_config, dtype=self.dtype, param_dtype=param_dtype,
                                 remat=bool(v.remat), weight_norm=self.weight_norm, init_std=inits[init])
        self.discriminator = VocoderDiscriminator(self.discriminator_config, dtype=self.dtype,
                                                  param_dtype=param_dtype)
        self._sample = None
        self._sample_fn = None
        self._flops: dict[tuple, float] = {}

    # -- data -----------------------------------------------------------------------------------
    def pipeline(self, split: str = "train", process_index: int = 0, process_count: int = 1, **kw):
        """The vocoder pipeline with one length bucket, ``vocoder.segment_frames`` (longer records are
        randomly cropped to it, shorter ones zero-padded); ``config.data.length_buckets`` is not used."""
        kw.setdefault("length_buckets", (self.segment_frames,))
        return super().pipeline(split, process_index, process_count, **kw)

    def memory_hints(self) -> str:
        return "vocoder.remat=True (recompute each AMP block in the backward), a shorter vocoder.segment_frames"

    def tokens_in_batch(self, batch: Mapping[str, np.ndarray]) -> int:
        """Mel frames generated per batch (rows x crop), for frames/s."""
        return int(batch["mel"].shape[0] * batch["mel"].shape[1])

    # -- params ---------------------------------------------------------------------------------
    def init_params(self, rng, batch):
        g_rng, d_rng = jax.random.split(rng)
        mel = jnp.zeros(batch["mel"].shape, jnp.float32)
        wave = jnp.zeros(batch["wave"].shape, jnp.float32)
        return {"generator": self.generator.init(g_rng, mel)["params"],
                "discriminator": self.discriminator.init(d_rng, wave)["params"]}

    def _scratch_discriminator(self) -> Any:
        """The discriminators' params of a run from scratch with ``config.seed`` (NumPy)."""
        init_rng, _ = jax.random.split(jax.random.key(int(self.config.seed)))
        _, d_rng = jax.random.split(init_rng)
        rows = int(self.config.global_batch_size)
        wave = jnp.zeros((rows, self.segment_frames * HOP), jnp.float32)
        params = jax.jit(lambda r: nn.unbox(self.discriminator.init(r, wave))["params"])(d_rng)
        return jax.tree.map(np.asarray, params)

    def select_init_params(self, restored: Any) -> Any:
        """Generator params from a restored tree (``params``/``generator``/``bigvgan``/top level, plain or
        weight-normed; converted to this run's layout); discriminators from it when present, else fresh."""
        tree = restored
        if isinstance(tree, Mapping) and "params" in tree and "conv_pre" not in tree:
            tree = tree["params"]
        disc = None
        if isinstance(tree, Mapping) and "generator" in tree:
            gen, disc = tree["generator"], tree.get("discriminator")
        elif isinstance(tree, Mapping) and "bigvgan" in tree:
            gen = tree["bigvgan"]
        else:
            gen = tree
        if not (isinstance(gen, Mapping) and "conv_pre" in gen):
            keys = sorted(restored)[:10] if isinstance(restored, Mapping) else type(restored).__name__
            raise ConfigError("init_from: no BigVGAN generator params found (expected 'conv_pre' at the top, under "
                              f"'generator', 'bigvgan' or 'params'; top-level keys: {keys})")
        gen = jax.tree.map(np.asarray, dict(gen))
        if self.weight_norm and not _is_weight_normed(gen):
            gen = add_weight_norm(gen)
        elif not self.weight_norm and _is_weight_normed(gen):
            gen = remove_weight_norm(gen)
        if disc is None:
            log.info("init_from: generator only; discriminators from scratch")
            disc = self._scratch_discriminator()
        return {"generator": gen, "discriminator": disc}

    # -- optimizer ------------------------------------------------------------------------------
    def _schedule(self, lr: float) -> optax.Schedule:
        v = self.config.vocoder
        decay = optax.exponential_decay(lr, transition_steps=1, decay_rate=float(v.lr_decay))
        warmup = int(v.warmup_steps)
        if warmup <= 0:
            return decay
        return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])

    def _part_tx(self, schedule) -> optax.GradientTransformation:
        v = self.config.vocoder
        clip = float(v.grad_clip_norm)
        return optax.chain(
            optax.clip_by_global_norm(clip) if clip > 0 else optax.identity(),
            optax.adamw(schedule, b1=float(v.b1), b2=float(v.b2), eps=float(v.eps),
                        weight_decay=float(v.weight_decay)),
        )

    @staticmethod
    def part_of(path: str) -> str:
        """Optimizer group of a ``/``-joined param path: generator, mpd, or spectral (CQTD/MRD)."""
        if path.startswith("generator/"):
            return "generator"
        if path.startswith("discriminator/mpd_"):
            return "mpd"
        return "spectral"

    def make_optimizer(self, total_steps: int):
        """AdamW per part with its own clipping (see module docstring); ``(tx, generator schedule)``."""
        v = self.config.vocoder
        g_schedule = self._schedule(float(v.learning_rate))
        d_schedule = self._schedule(float(v.discriminator_learning_rate))
        transforms = {"generator": self._part_tx(g_schedule), "mpd": self._part_tx(d_schedule),
                      "spectral": self._part_tx(d_schedule), "frozen": optax.set_to_zero()}
        freeze = tuple(self.config.freeze)

        def labels(params):
            frozen = freeze_labels(params, freeze) if freeze else None
            parts = jax.tree_util.tree_map_with_path(lambda p, _: self.part_of(param_path(p)), params)
            if frozen is None:
                return parts
            return jax.tree.map(lambda part, f: "frozen" if f == "frozen" else part, parts, frozen)

        tx = optax.multi_transform(transforms, labels)
        if int(self.config.grad_accum_steps) > 1:
            tx = optax.MultiSteps(tx, every_k_schedule=int(self.config.grad_accum_steps))
        return tx, g_schedule

    # -- loss -----------------------------------------------------------------------------------
    def model_mel(self, batch) -> jax.Array:
        """(B, L, n_mels) float32: the batch mel with frames past ``mel_lengths`` set to silence."""
        mel = batch["mel"].astype(jnp.float32)
        frames = jnp.arange(mel.shape[1])[None, :] < batch["mel_lengths"][:, None]
        return jnp.where(frames[..., None], mel, SILENCE_LOG_MEL)

    def phase_starts(self) -> tuple[int, ...]:
        """``(discriminator_start_step,)`` when it is > 0 (phase 0: the mel-only warm-up), else one phase."""
        start = int(self.config.vocoder.get("discriminator_start_step", 0))
        return (start,) if start > 0 else ()

    def _adversarial(self, phase: int | None) -> bool:
        return phase is None or phase > 0 or not self.phase_starts()

    def loss_fn(self, params, batch, rng, train: bool = True, phase: int | None = None):
        v = self.config.vocoder
        weights = batch["valid"].astype(jnp.float32)
        real = batch["wave"].astype(jnp.float32)
        mel = self.model_mel(batch)
        fake = self.generator.apply({"params": params["generator"]}, mel).astype(jnp.float32)  # (B, T)
        mel_l1 = _masked_mean(_row_mean(lambda f, r: vl.multiscale_mel_loss(f, r, self.mel_loss_config), fake, real),
                              weights)
        if self._adversarial(phase):
            # discriminators: real vs detached fake
            logits, fmaps = self.discriminator.apply({"params": params["discriminator"]},
                                                     jnp.concatenate([real, jax.lax.stop_gradient(fake)]))
            real_logits, fake_logits = split_real_fake(logits)
            real_fmaps, _ = split_real_fake(fmaps)
            d_real = _masked_mean(_row_mean(lambda r: vl.discriminator_loss(r, [])[0], real_logits), weights)
            d_fake = _masked_mean(_row_mean(lambda f: vl.discriminator_loss([], f)[0], fake_logits), weights)
            # generator: frozen discriminators on the fake
            frozen_d = jax.lax.stop_gradient(params["discriminator"])
            g_logits, g_fmaps = self.discriminator.apply({"params": frozen_d}, fake)
            g_adv = _masked_mean(_row_mean(vl.generator_adversarial_loss, g_logits), weights)
            fm = _masked_mean(_row_mean(vl.feature_matching_loss, jax.lax.stop_gradient(real_fmaps), g_fmaps),
                              weights)
            parts = {"d_real": d_real, "d_fake": d_fake, "g_adv": g_adv, "feature_matching": fm,
                     "adversarial": jnp.ones((), jnp.float32)}
        else:  # the mel-only warm-up: the same metrics, no discriminator pass
            parts = {k: jnp.zeros((), jnp.float32) for k in ("d_real", "d_fake", "g_adv", "feature_matching",
                                                              "adversarial")}
        d_loss = parts["d_real"] + parts["d_fake"]
        g_loss = (float(v.lambda_adv) * parts["g_adv"] + float(v.lambda_fm) * parts["feature_matching"]
                  + float(v.lambda_mel) * mel_l1)
        total = d_loss + g_loss
        metrics = {**parts, "d_loss": d_loss, "mel_l1": mel_l1, "g_loss": g_loss, "total": total}
        if not train:
            metrics["mel_error"] = self._mel_error(fake, batch, weights)
        return total, metrics

    def _mel_config(self):
        from indextts2_jax.audio import MelConfig

        g = self.generator_config
        return MelConfig(n_fft=g.n_fft, win_size=g.win_size, hop_size=g.hop_size, num_mels=g.num_mels,
                         sampling_rate=g.sampling_rate, fmin=float(g.fmin), fmax=g.fmax)

    def _mel_error(self, fake, batch, weights):
        from indextts2_jax.audio import mel_spectrogram

        fake_mel = mel_spectrogram(fake, self._mel_config())  # (B, L, n_mels)
        mel = batch["mel"].astype(jnp.float32)
        n = min(fake_mel.shape[1], mel.shape[1])
        frames = (jnp.arange(n)[None, :] < batch["mel_lengths"][:, None]) & (weights[:, None] > 0)
        err = jnp.mean(jnp.abs(fake_mel[:, :n] - mel[:, :n]), axis=-1)
        m = frames.astype(jnp.float32)
        return jnp.sum(err * m) / jnp.maximum(jnp.sum(m), 1.0)

    # -- throughput -----------------------------------------------------------------------------
    def flops_per_step(self, batch, num_params: int, phase: int | None = None) -> float:
        """XLA's count of one generator forward and one discriminator forward over the batch, times 3
        (forward + backward) for G and 3 * 3 for the discriminators (the D pass on 2B rows and the G
        pass on B rows, each with its backward); in the mel-only warm-up (phase 0 of
        ``discriminator_start_step``) the generator's part alone. The multi-scale mel loss is left out
        (small)."""
        key = (tuple(batch["mel"].shape), tuple(batch["wave"].shape))
        if key not in self._flops:
            gen = jax.eval_shape(lambda r: nn.unbox(self.generator.init(r, jnp.zeros((1, 4, batch["mel"].shape[2]))))
                                 ["params"], jax.random.key(0))
            disc = jax.eval_shape(lambda r: nn.unbox(self.discriminator.init(r, jnp.zeros((1, batch["wave"].shape[1]))))
                                  ["params"], jax.random.key(0))
            mel = jax.ShapeDtypeStruct(batch["mel"].shape, jnp.float32)
            wave = jax.ShapeDtypeStruct(batch["wave"].shape, jnp.float32)

            def count(fn, *args):
                with no_mesh(), nn.logical_axis_rules(()):
                    cost = jax.jit(fn).lower(*args).cost_analysis()
                cost = cost[0] if isinstance(cost, (list, tuple)) else cost
                return float((cost or {}).get("flops", 0.0))

            g = count(lambda p, m: self.generator.apply({"params": p}, m), gen, mel)
            d = count(lambda p, w: self.discriminator.apply({"params": p}, w), disc, wave)
            self._flops[key] = (3.0 * g, 9.0 * d)
        g, d = self._flops[key]
        return g + d if self._adversarial(phase) else g

    # -- samples --------------------------------------------------------------------------------
    def sample_example(self) -> dict[str, np.ndarray] | None:
        """The first validation example (first train example without a valid split), as a batch of one."""
        if self._sample is None:
            batch = None
            try:
                batch = next(iter(self.pipeline("valid", 0, 1, num_epochs=1, shuffle=False, num_workers=0)))
            except (FileNotFoundError, ValueError, StopIteration):
                batch = self.first_batches(1)[0]
            rows = np.nonzero(batch["valid"])[0]
            if not len(rows):
                return None
            r = int(rows[0])
            self._sample = {k: np.asarray(batch[k][r:r + 1]) for k in ("mel", "mel_lengths", "wave", "wave_lengths")}
        return self._sample

    def write_samples(self, params: Any, writer: Any, step: int) -> None:
        """Log one generated validation clip and its log-mel image, plus the real clip and mel.

        Called on process 0 only, so it runs the generator on host copies of the params outside the
        mesh; with params sharded over several hosts (not all addressable here) it logs nothing.
        """
        if writer is None:
            return
        example = self.sample_example()
        if example is None:
            return
        gen = params["generator"]
        if not all(getattr(x, "is_fully_addressable", True) for x in jax.tree.leaves(gen)):
            log.info("write_samples: generator params span several hosts; no audio sample at step %d", step)
            return
        from indextts2_jax.audio import mel_spectrogram

        gen = jax.tree.map(np.asarray, jax.device_get(gen))
        n = int(example["mel_lengths"][0])
        with no_mesh(), nn.logical_axis_rules(()):
            if self._sample_fn is None:
                self._sample_fn = jax.jit(lambda p, m: self.generator.apply({"params": p}, m))
            fake = np.asarray(self._sample_fn(gen, jnp.asarray(self.model_mel(
                {k: jnp.asarray(v) for k, v in example.items()}))))[0, : n * HOP]
            fake_mel = np.asarray(mel_spectrogram(fake[None], self._mel_config())[0])
        real = example["wave"][0, : int(example["wave_lengths"][0])]
        sr = self.generator_config.sampling_rate
        writer.add_audio("samples/generated", fake.astype(np.float32), step, sample_rate=sr)
        writer.add_audio("samples/real", real.astype(np.float32), step, sample_rate=sr)
        lo, hi = SILENCE_LOG_MEL, 2.5
        for tag, m in (("samples/mel_generated", fake_mel), ("samples/mel_real", example["mel"][0, :n])):
            image = np.clip((np.asarray(m, np.float32).T[::-1] - lo) / (hi - lo), 0.0, 1.0)  # (mels, frames)
            writer.add_image(tag, image, step, dataformats="HW")


# -- init_from and export -----------------------------------------------------------------------
def prepare_init_from(path: str | os.PathLike, workdir: str | os.PathLike,
                      generator_config: BigVGANConfig | None = None) -> str:
    """An Orbax checkpoint path for the vocoder stage's ``config.init_from``.

    * a converted checkpoint folder (``converted.json`` + ``params/bigvgan.msgpack``, written by
      ``indextts2_jax.convert.official.save_converted``) is rewritten once as an Orbax checkpoint
      ``<workdir>/init_from_bigvgan`` holding ``{"generator": params}``;
    * an official BigVGAN folder (``bigvgan_generator.pt`` [+ ``config.json``]) or the ``.pt`` file
      itself is converted with :func:`indextts2_jax.models.bigvgan.from_torch` (needs torch) into the same;
    * any other path (an Orbax checkpoint) is returned as is.
    """
    src = Path(path)
    pt = src / "bigvgan_generator.pt" if src.is_dir() else src
    file = converted_component_file(src, "bigvgan")
    if file is not None:
        load = functools.partial(load_params, file)
    elif pt.is_file() and pt.suffix in (".pt", ".pth"):
        from indextts2_jax.convert.official import _read_torch
        from indextts2_jax.models import bigvgan

        cfg = generator_config
        config_json = pt.parent / "config.json"
        if cfg is None and config_json.is_file():
            cfg = BigVGANConfig.from_official(json.loads(config_json.read_text()))
        if cfg is None:
            raise ConfigError(f"{pt}: no config.json next to it; pass generator_config")
        load = functools.partial(bigvgan.from_torch, _read_torch(pt), cfg)
    else:
        return str(path)
    return write_init_checkpoint(Path(workdir) / "init_from_bigvgan", "generator", load)


def load_generator_params(path: str | os.PathLike) -> Any:
    """Plain-layout generator params (weight norm folded) from a vocoder-stage workdir (its latest
    checkpoint) or a generator params msgpack (:func:`export_generator_params`' output, or a converted
    checkpoint's ``params/bigvgan.msgpack``)."""
    p = Path(path)
    if p.is_dir() and (p / "checkpoints").is_dir():
        gen = latest_params(p)[1]["generator"]
    elif p.is_file():
        gen = load_params(p)
        gen = gen.get("generator", gen) if isinstance(gen, Mapping) else gen
    else:
        raise FileNotFoundError(f"{str(path)!r}: neither a vocoder-stage workdir (with checkpoints/) nor a "
                                "generator params file")
    if not (isinstance(gen, Mapping) and "conv_pre" in gen):
        raise ConfigError(f"{str(path)!r} holds no BigVGAN generator params")
    return remove_weight_norm(gen) if _is_weight_normed(gen) else gen


def export_generator_params(workdir: str | os.PathLike, out_path: str | os.PathLike | None = None) -> Path:
    """The latest vocoder checkpoint's generator, weight norm folded (the plain layout of
    ``bigvgan.from_torch`` and of a converted checkpoint's ``params/bigvgan.msgpack``), as flax msgpack
    (default ``<workdir>/bigvgan_params.msgpack``)."""
    return save_params(load_generator_params(workdir), out_path or Path(workdir) / GENERATOR_PARAMS_FILE)


__all__ = [
    "GENERATOR_PARAMS_FILE",
    "load_generator_params",
    "VocoderTask",
    "add_weight_norm",
    "discriminator_config_from",
    "export_generator_params",
    "generator_config_from",
    "mel_loss_config_from",
    "prepare_init_from",
]
