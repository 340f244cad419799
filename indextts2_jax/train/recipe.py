"""Stage recipes: the demo's preprocess -> codec -> gpt -> s2mel -> vocoder chain, and synthetic shards for tests.

    from indextts2_jax.train.recipe import run_demo_stages
    out = run_demo_stages("runs/demo", manifest="runs/demo/corpus/manifest.jsonl", bpe_model="runs/demo/bpe.model")

:func:`run_demo_stages` preprocesses the manifest (:data:`DEMO_FEATURES`), trains the demo codec
on the stacked-mel stand-in features and exports its params, then trains the demo GPT and the S2M
stage with that frozen codec producing the codes in the step, and the BigVGAN vocoder on
(mel, waveform) crops. A re-run resumes: each trainer resumes from its workdir's checkpoints, and a
finished stage only re-exports.

:func:`write_synthetic_shards` writes a small shard set with the same record layout as
``data_pipeline.preprocess`` (``mel_stacked`` and ``text_ids``), made of deterministic features
that depend on the text and the speaker, so a model can learn something from it quickly.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

FRAME_RATE = 22050 / 256 / 2  # stacked mel pairs: ~43 Hz


def write_synthetic_shards(out_dir: str | Path, *, num_utterances: int = 40, num_speakers: int = 4,
                           vocab: int = 64, dim: int = 160, frames_per_token: int = 4, min_tokens: int = 4,
                           max_tokens: int = 12, valid_utterances: int = 8, seed: int = 0,
                           codes: bool = False, mel: bool = False, speaker_embedding_dim: int = 0,
                           audio: bool = False) -> Path:
    """A train (+ valid) shard set of ``num_utterances`` synthetic records; returns ``out_dir``.

    Record i: speaker ``i % num_speakers``, ``text_ids`` of ``min_tokens..max_tokens`` ids in
    ``[2, vocab)``, ``mel_stacked`` = each token's fixed random vector (+ a speaker offset, + noise)
    repeated ``frames_per_token`` times. With ``codes``, also ``semantic_codes`` (the token ids,
    repeated likewise), as shards preprocessed with a codec would hold. With ``mel`` (the s2mel
    stage), also ``mel`` (2T, 80) = the ``mel_stacked`` pairs unstacked (exactly what the stand-in is
    made of) and ``campplus_fbank`` (100 Hz frames over the duration, a per-speaker pattern + noise);
    these draw from their own generator, so the other fields do not change. With
    ``speaker_embedding_dim``, also ``speaker_embedding`` (a fixed random vector per speaker, as the
    ``campplus`` feature of real shards; the s2mel pipeline then prefers it to the fbank).

    With ``audio`` (the vocoder stage), :func:`add_synthetic_audio` then adds ``wave`` and its ``mel``.
    """
    from data_pipeline import shards as shard_io

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    token_vectors = rng.normal(size=(vocab, dim)).astype(np.float32)
    speaker_vectors = 0.5 * rng.normal(size=(num_speakers, dim)).astype(np.float32)
    speakers = [f"spk{s}" for s in range(num_speakers)]
    style_rng = np.random.default_rng([seed, 7])
    speaker_fbank = style_rng.normal(size=(num_speakers, 80)).astype(np.float32)
    speaker_embedding = np.random.default_rng([seed, 8]).normal(size=(num_speakers, max(speaker_embedding_dim, 1)))
    records = []
    for i in range(num_utterances + valid_utterances):
        s = i % num_speakers
        n = int(rng.integers(min_tokens, max_tokens + 1))
        ids = rng.integers(2, vocab, size=n).astype(np.int32)
        feats = np.repeat(token_vectors[ids], frames_per_token, axis=0) + speaker_vectors[s]
        feats = (feats + 0.1 * rng.normal(size=feats.shape)).astype(np.float32)
        records.append({"id": f"utt{i:05d}", "speaker": speakers[s], "speaker_index": s,
                        "text": " ".join(map(str, ids)), "language": "en", "emotion": None,
                        "duration": feats.shape[0] / FRAME_RATE,
                        "sample_rate": 22050, "num_samples": int(feats.shape[0] * 512), "mel_stacked": feats,
                        "text_ids": ids})
        if codes:
            records[-1]["semantic_codes"] = np.repeat(ids, frames_per_token).astype(np.int32)
        if mel:
            n_fbank = max(2, int(feats.shape[0] / FRAME_RATE * 100))
            fbank = speaker_fbank[s] + 0.3 * style_rng.normal(size=(n_fbank, 80))
            records[-1]["mel"] = np.ascontiguousarray(feats.reshape(2 * feats.shape[0], dim // 2))
            records[-1]["campplus_fbank"] = (fbank - fbank.mean(0)).astype(np.float32)
        if speaker_embedding_dim:
            records[-1]["speaker_embedding"] = speaker_embedding[s].astype(np.float32)
    splits = {"train": records[:num_utterances], "valid": records[num_utterances:]}
    for split, recs in splits.items():
        if not recs:
            continue
        path = out / shard_io.shard_name(split, 0, 1)
        index = []
        with shard_io.ShardWriter(path) as w:
            for r in recs:
                w.write(r)
                lengths = {"mel_stacked": int(r["mel_stacked"].shape[0]), "text_ids": int(r["text_ids"].shape[0])}
                for key in ("mel", "campplus_fbank"):
                    if key in r:
                        lengths[key] = int(r[key].shape[0])
                index.append({"id": r["id"], "speaker": r["speaker"], "speaker_index": r["speaker_index"],
                              "duration": round(float(r["duration"]), 4), "text_chars": len(r["text"]),
                              "lengths": lengths})
        shard_io.write_done(path, {"num_records": len(index), "examples": index, "skipped": []})
    meta = {"features": ["text_ids", "mel_stacked"], "speakers": speakers,
            "shards": {k: 1 for k, v in splits.items() if v},
            "utterances": {k: len(v) for k, v in splits.items()},
            "outputs": {"mel_stacked": "(T, 160) float32", "text_ids": "(N,) int32"}, "synthetic": True}
    if codes:
        meta["outputs"]["semantic_codes"] = "(T,) int32"
    if mel:
        meta["features"] += ["mel", "campplus_fbank"]
        meta["outputs"].update({"mel": "(2T, 80) float32", "campplus_fbank": "(F, 80) float32"})
    if speaker_embedding_dim:
        meta["outputs"]["speaker_embedding"] = f"({speaker_embedding_dim},) float32"
    (out / "dataset.json").write_text(json.dumps(meta, indent=1))
    if audio:
        add_synthetic_audio(out)
    return out


def synthetic_wave(frame_ids: np.ndarray, speaker: int, samples_per_frame: int = 512, seed: int = 0,
                   sample_rate: int = 22050) -> np.ndarray:
    """A float32 waveform (len(frame_ids) * samples_per_frame,) in [-1, 1]: a harmonic tone per frame id.

    Id t sounds at ``f0 = speaker base (110..185 Hz) * 2 ** ((t % 12) / 12)`` with 4 harmonics whose
    amplitudes depend on t; continuous phase, 5 ms cross-fades between ids, a little noise (seeded).
    """
    ids = np.asarray(frame_ids)
    rng = np.random.default_rng([seed, 1234])
    base = 110.0 * 2 ** ((speaker % 4) / 4)
    f0 = np.repeat(base * 2 ** ((ids % 12) / 12), samples_per_frame)
    amps = np.repeat(np.stack([0.5 / (1 + (ids * (h + 3)) % 4) for h in range(4)], 1), samples_per_frame, axis=0)
    fade = max(1, int(0.005 * sample_rate))

    def smooth(x):
        return np.convolve(np.pad(x, (fade // 2, fade - 1 - fade // 2), mode="edge"), np.ones(fade) / fade, "valid")

    f0 = smooth(f0)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    wave = 0.5 * sum(smooth(amps[:, h]) * np.sin((h + 1) * phase) for h in range(4))
    wave = wave + 0.003 * rng.standard_normal(wave.shape)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def add_synthetic_audio(shards_dir: str | Path) -> Path:
    """Add the vocoder stage's fields to a :func:`write_synthetic_shards` shard set, in place.

    Each record gets ``wave`` (N,) int16 at 22.05 kHz, N = 512 * (``mel_stacked`` frames):
    :func:`synthetic_wave` of its text ids spread over the frames and its speaker; and ``mel``
    (N // 256, 80), its log-mel exactly as ``data_pipeline.preprocess`` computes it
    (:func:`indextts2_jax.audio.mel_spectrogram`). Records holding a ``mel`` already are refused.
    """
    from data_pipeline import shards as shard_io
    from data_pipeline.preprocess import _log_mel

    out = Path(shards_dir)
    meta = json.loads((out / "dataset.json").read_text())
    if "mel" in meta.get("outputs", {}):
        raise ValueError(f"{out}: the shards hold a 'mel' already; write them without it to add audio")
    for split in meta["shards"]:
        for path in shard_io.list_shards(out, split):
            records = list(shard_io.read_shard(path))
            info = shard_io.read_done(path)
            with shard_io.ShardWriter(path) as w:
                for r, entry in zip(records, info["examples"]):
                    n = int(r["mel_stacked"].shape[0])
                    ids = np.asarray(r["text_ids"])
                    frame_ids = ids[np.arange(n) * len(ids) // n]
                    wave = synthetic_wave(frame_ids, int(r["speaker_index"]), 512, seed=int(r["id"][3:]))
                    r["wave"] = np.round(np.clip(wave, -1.0, 32767 / 32768) * 32768).astype(np.int16)
                    r["mel"] = _log_mel(r["wave"].astype(np.float32) / 32768.0, None)
                    w.write(r)
                    entry["lengths"].update(mel=int(r["mel"].shape[0]), wave=int(r["wave"].shape[0]))
            shard_io.write_done(path, info)
    meta["features"] += ["mel", "wave"]
    meta["outputs"].update({"mel": "(N // 256, 80) float32", "wave": "(N,) int16"})
    (out / "dataset.json").write_text(json.dumps(meta, indent=1))
    return out


def _final_metrics(workdir: Path) -> dict[str, Any]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return {}
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    train = [r for r in rows if r.get("split") == "train"]
    evals = [r for r in rows if r.get("split") == "eval"]
    out = {}
    if train:
        out["first_train"] = train[0]
        out["last_train"] = train[-1]
    if evals:
        out["last_eval"] = evals[-1]
    return out


DEMO_STAGES = ("codec", "gpt", "s2mel", "vocoder")
DEMO_FEATURES = ("text_ids", "mel_stacked", "mel", "wave", "campplus_fbank")


def apply_overrides(config, overrides: dict[str, Any] | None):
    """Set dotted keys (``{"log.num_eval_batches": 0}``) on a config; returns it."""
    for key, value in (overrides or {}).items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def run_demo_stages(workdir: str | Path, *, manifest: str | Path | None = None, bpe_model: str | Path | None = None,
                    shards: str | Path | None = None, scale: int = 1, codec_steps: int | None = None,
                    gpt_steps: int | None = None, s2mel_steps: int | None = None, vocoder_steps: int | None = None,
                    batch: int | None = None, num_workers: int = 0, stages: tuple[str, ...] = DEMO_STAGES,
                    overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Preprocess (unless ``shards`` is given) -> codec -> gpt -> s2mel -> vocoder, for the demo configs.

    Args:
      workdir: outputs: ``shards/``, one workdir per stage (``codec/`` also holds ``codec_params.msgpack``);
        the stage folders are what ``indextts2_jax.export.export_workdirs([workdir], ...)`` reads.
      manifest, bpe_model: the demo corpus manifest and BPE model (``experiments/demo.py`` makes both).
      shards: existing shards (the :data:`DEMO_FEATURES` the chosen stages need) instead of preprocessing.
      codec_steps, gpt_steps, s2mel_steps, vocoder_steps, batch: override the demo configs' ``steps``/``batch``.
      stages: which stages to run, in order; a stage's inputs (the codec params for gpt/s2mel) must exist.
      overrides: dotted config keys -> values applied to every stage config (e.g. ``{"data.num_workers": 0}``).
    Returns a dict with the paths (shards, stage workdirs, codec params) and, per stage, the trainer's
    summary and the first/last logged metrics. The S2M stage is trained without the GPT latent (content =
    the codec's code embeddings), which keeps the demo within its CPU budget; the export then zeroes
    ``gpt_layer`` so synthesis matches training.
    """
    from configs import demo
    from indextts2_jax.train.tasks import get_task
    from indextts2_jax.train.tasks.codec import CODEC_PARAMS_FILE, export_codec_params
    from indextts2_jax.train.trainer import train

    unknown = [s for s in stages if s not in DEMO_STAGES]
    if unknown:
        raise ValueError(f"unknown demo stages {unknown}; the demo runs {DEMO_STAGES} in that order")
    out = Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"workdir": str(out.resolve())}

    if shards is None:
        if manifest is None or bpe_model is None:
            raise ValueError("run_demo_stages needs shards=, or manifest= and bpe_model= to preprocess")
        from data_pipeline.manifest import read_manifest
        from data_pipeline.preprocess import options_from_config, preprocess

        shards = out / "shards"
        t = time.perf_counter()
        cfg = demo.get_config(f"stage=gpt,scale={scale}")
        options = options_from_config(cfg, DEMO_FEATURES, str(bpe_model))
        report = preprocess(read_manifest(str(manifest)), shards, options, num_workers=num_workers, progress=False)
        result["preprocess"] = {"seconds": round(time.perf_counter() - t, 1), "examples": report["total"]["examples"],
                                "skipped": report["total"]["skipped"]}
    result["shards"] = str(Path(shards).resolve())

    def stage_config(stage: str, steps: int | None):
        arg = f"stage={stage},scale={scale}" + (f",steps={steps}" if steps else "")
        arg += f",batch={batch}" if batch else ""
        c = demo.get_config(arg)
        c.data.shards = str(Path(shards).resolve())
        c.data.num_workers = num_workers
        if bpe_model:
            c.data.bpe_model = str(bpe_model)
            c.model.dataset.bpe_model = str(bpe_model)
        return apply_overrides(c, overrides)

    codec_params = out / "codec" / CODEC_PARAMS_FILE
    steps = {"codec": codec_steps, "gpt": gpt_steps, "s2mel": s2mel_steps, "vocoder": vocoder_steps}
    for stage in stages:
        c = stage_config(stage, steps[stage])
        if stage in ("gpt", "s2mel"):
            if not codec_params.exists():
                raise FileNotFoundError(f"stage {stage} needs the demo codec params {codec_params}: run the codec "
                                        "stage first")
            c.codec_checkpoint = str(codec_params)
        stage_dir = out / stage
        t = time.perf_counter()
        summary = train(c, str(stage_dir), get_task(c))
        entry = {"workdir": str(stage_dir), "step": summary["step"], "seconds": round(time.perf_counter() - t, 1),
                 **_final_metrics(stage_dir)}
        if stage == "codec":
            entry["params"] = str(export_codec_params(stage_dir, codec_params))
        result[stage] = entry
        (out / "stages.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def tiny_config(stage: str, shards: str | Path, steps: int = 10, **overrides: Any):
    """The demo config of ``stage`` shrunk for tests on :func:`write_synthetic_shards` data.

    Short buckets (32, 64 frames), 16 text tokens, 32-frame prompts, synchronous checkpoints, no
    Grain workers; ``overrides`` are dotted keys (``"mesh.data"``, ``"gpt.duration_control"``...).
    """
    from configs import demo

    c = demo.get_config(f"stage={stage},steps={steps},batch=8")
    c.data.shards = str(Path(shards).resolve())
    c.data.num_workers = 0
    c.data.length_buckets = (32, 64)
    c.data.max_text_tokens = 16
    c.data.prompt_frames = 32
    c.data.prompt_min_frames = 8
    c.model.gpt.max_text_tokens = 16
    c.model.gpt.max_mel_tokens = 80
    c.model.gpt.layers = 1
    c.optimizer.warmup_steps = 5
    c.checkpoint.async_save = False
    c.checkpoint.every_steps = 5
    c.log.every_steps = 1
    c.log.eval_every_steps = 10_000
    c.log.num_eval_batches = 1
    return apply_overrides(c, overrides)
