"""The demo recipe: the main job on the embedded default.

    python -m experiments.demo --workdir runs/demo [--num_utterances 2000] [--scale 1]

Steps (each skipped when its output already exists, so a re-run resumes):
  1. the demo corpus: ~2000 utterances by 12 espeak-ng voices (``data_pipeline.demo_corpus``),
     22.05 kHz wavs and ``corpus/manifest.jsonl``; nothing is downloaded;
  2. a held-out list (``heldout.jsonl``: sentences and a prompt voice for the final synthesis);
  3. a SentencePiece BPE tokenizer trained on the training sentences (``bpe.model``);
  4. the resolved config of every training stage (``configs/<stage>.json``);
  5. the training stages (``indextts2_jax.train.recipe.run_demo_stages``) on the corpus minus the
     held-out lines (``train_manifest.jsonl``): preprocessing to ArrayRecord shards, the codec (index
     bank) stage, the GPT and S2M stages with the frozen demo codec making their codes, the BigVGAN
     vocoder stage (``stages/<stage>/``, tensorboard curves in each);
  6. export of the four stage workdirs to an inference bundle (``bundle/``);
  7. synthesis of the held-out sentences, each with a training utterance of its voice as the prompt
     (``synthesis/*.wav`` + ``report.json``);
  8. the evaluation report of those files against their texts, prompts and the original espeak-ng
     recordings (``evaluation/report.md``, ``report.json``, ``plots/``);
  9. the stage-wise diagnosis (skip: ``--no_diagnosis``): the same sentences with the truth fed in below a
     stage, scored the same way: ``diagnosis/true_codes/`` (the recording's own codes through S2M and the
     vocoder: the system minus the GPT) and ``diagnosis/copy_synthesis/`` (the recording's mel through the
     vocoder alone). Read the three WERs top down to see which stage loses the words.

``--stages`` runs a prefix of the stages only (then steps 6-8 are skipped and the summary says so).
Outputs land under ``--workdir``; ``summary.json`` lists them (with the first and last losses of
each stage and the evaluation summary). ``--scale N`` widens every demo model N times (for a GPU).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from indextts2_jax.train.recipe import DEMO_STAGES as DEMO_ORDER
from indextts2_jax.train.recipe import apply_overrides


def run(workdir: str, num_utterances: int | None = None, scale: int = 1, num_workers: int | None = None,
        stages: tuple[str, ...] = DEMO_ORDER, steps: dict[str, int] | None = None, batch: int | None = None,
        synth_limit: int | None = None, diagnose: bool = True, overrides: dict | None = None) -> dict:
    """The recipe (see the module docstring); ``steps`` maps a stage to its step count (default: the config's),
    ``synth_limit`` caps the held-out sentences synthesized; ``diagnose`` adds the stage-wise diagnosis runs;
    ``overrides`` sets dotted config keys of every training stage (e.g. ``{"log.num_eval_batches": 0}``).
    Returns the summary (also ``summary.json``)."""
    steps = dict(steps or {})
    from configs import demo
    from data_pipeline.demo_corpus import build_demo_corpus
    from data_pipeline.manifest import read_manifest
    from indextts2_jax.text.tokenizer import train_bpe

    out = Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    base = demo.get_config(f"scale={scale}")
    n = int(num_utterances or base.demo.num_utterances)
    summary: dict = {"workdir": str(out.resolve()), "steps": {}}

    t = time.perf_counter()
    manifest = build_demo_corpus(out / "corpus", num_utterances=n, num_speakers=int(base.demo.num_speakers),
                                 seed=int(base.seed), num_workers=num_workers)
    utts = read_manifest(manifest)
    hours = sum(u.duration for u in utts) / 3600
    speakers = sorted({u.speaker for u in utts})
    summary["steps"]["corpus"] = {"manifest": str(manifest), "utterances": len(utts), "speakers": len(speakers),
                                  "hours": round(hours, 3), "seconds": round(time.perf_counter() - t, 1)}
    print(f"[demo] corpus: {len(utts)} utterances, {len(speakers)} speakers, {hours:.2f} h -> {manifest}")

    # Held-out sentences (never trained on), each with a prompt utterance of a training voice.
    heldout_path = out / "heldout.jsonl"
    rng = random.Random(int(base.seed))
    k = min(int(base.demo.holdout_utterances), max(1, len(utts) // 10))
    held = sorted(rng.sample(range(len(utts)), k))
    held_ids = {utts[i].id for i in held}
    train_utts = [u for u in utts if u.id not in held_ids]
    with open(heldout_path, "w") as f:
        for i in held:
            prompt = rng.choice([u for u in train_utts if u.speaker == utts[i].speaker] or train_utts)
            f.write(json.dumps({"id": utts[i].id, "text": utts[i].text, "speaker": utts[i].speaker,
                                "audio": str(Path(utts[i].audio_path).resolve()),
                                "prompt_audio": str(Path(prompt.audio_path).resolve())}) + "\n")
    summary["steps"]["heldout"] = {"path": str(heldout_path), "count": k}

    bpe = out / "bpe.model"
    if not bpe.exists():
        t = time.perf_counter()
        train_bpe([u.text for u in train_utts], int(base.demo.bpe_vocab_size), out / "bpe")
        print(f"[demo] BPE tokenizer ({base.demo.bpe_vocab_size} pieces) trained in {time.perf_counter() - t:.1f} s")
    summary["steps"]["bpe"] = {"path": str(bpe)}

    cfg_dir = out / "configs"
    cfg_dir.mkdir(exist_ok=True)
    for stage in ("codec", "gpt", "s2mel", "vocoder"):
        c = demo.get_config(f"stage={stage},scale={scale}")
        c.data.manifest = str(manifest)
        c.model.dataset.bpe_model = str(bpe)
        apply_overrides(c, overrides)
        (cfg_dir / f"{stage}.json").write_text(json.dumps(c.to_dict(), indent=2, sort_keys=True, default=str))
    summary["steps"]["configs"] = {"dir": str(cfg_dir)}

    if stages:
        from indextts2_jax.train.recipe import DEMO_STAGES, run_demo_stages

        if tuple(stages) != DEMO_STAGES[:len(stages)]:
            raise SystemExit(f"--stages {','.join(stages)}: the demo runs a prefix of {','.join(DEMO_STAGES)} "
                             "(each stage needs the ones before it) or '' (none)")
        t = time.perf_counter()
        from data_pipeline.manifest import write_manifest

        train_manifest = out / "train_manifest.jsonl"  # the held-out sentences are never trained on
        write_manifest(train_manifest, train_utts, relative=False)
        result = run_demo_stages(out / "stages", manifest=train_manifest, bpe_model=bpe, scale=scale,
                                 codec_steps=steps.get("codec"), gpt_steps=steps.get("gpt"),
                                 s2mel_steps=steps.get("s2mel"), vocoder_steps=steps.get("vocoder"), batch=batch,
                                 num_workers=0, stages=tuple(stages), overrides=overrides)
        summary["steps"]["train"] = {"seconds": round(time.perf_counter() - t, 1), **_losses(result)}
        for stage in DEMO_STAGES:
            if stage in result:
                first, last = result[stage].get("first_train", {}), result[stage].get("last_train", {})
                # the codec's total loss rises as its codebook spreads out (the VQ terms grow); its
                # reconstruction and code perplexity are what to read
                keys = ("reconstruction", "perplexity") if stage == "codec" else ("loss",)
                parts = ", ".join(f"{k} {first.get(k, float('nan')):.3g} -> {last.get(k, float('nan')):.3g}"
                                  for k in keys)
                print(f"[demo] {stage} stage: {result[stage]['step']} steps, {parts} ({result[stage]['workdir']})")
    if tuple(stages) == DEMO_ORDER:
        summary["steps"].update(_synthesize_and_evaluate(out, heldout_path, synth_limit, diagnose))
        summary["status"] = ("complete: corpus, BPE, the codec/GPT/S2M/vocoder stages, the exported bundle, "
                             "synthesis of the held-out sentences and their evaluation report")
    else:
        done = f"the {', '.join(stages)} stage(s)" if stages else "resolved configs (--stages '')"
        summary["status"] = f"stopped after {done} (no export/synthesis: that needs all four stages)"
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"[demo] {summary['status']}. Outputs: {out.resolve()} (summary.json lists them)")
    return summary


def _synthesize_and_evaluate(out: Path, heldout_path: Path, limit: int | None, diagnose: bool = True) -> dict:
    """Export the trained stages to a bundle, synthesize the held-out sentences, score them (and, with
    ``diagnose``, the stage-wise diagnosis runs: :func:`_diagnose`)."""
    from indextts2_jax.eval import evaluate_run
    from indextts2_jax.export import export_workdirs
    from indextts2_jax.infer.pipeline import IndexTTS2

    steps: dict = {}
    t = time.perf_counter()
    bundle = export_workdirs([out / "stages"], out / "bundle")
    steps["export"] = {"bundle": str(bundle), "seconds": round(time.perf_counter() - t, 1)}
    print(f"[demo] exported the trained stages to {bundle}")

    held = [json.loads(x) for x in heldout_path.read_text().splitlines() if x.strip()]
    held = held[:limit] if limit else held
    jobs_path = out / "synthesis_jobs.jsonl"
    with open(jobs_path, "w") as f:
        for h in held:
            job = {"id": h["id"], "text": h["text"], "speaker_prompt": h["prompt_audio"], "seed": 0}
            f.write(json.dumps(job) + "\n")
    t = time.perf_counter()
    tts = IndexTTS2.from_pretrained(bundle)
    report = tts.synthesize_jsonl(jobs_path, out / "synthesis")
    steps["synthesis"] = {"dir": str(out / "synthesis"), "count": len(report["jobs"]),
                          "seconds": round(time.perf_counter() - t, 1)}
    print(f"[demo] synthesized {len(report['jobs'])} held-out sentences -> {out / 'synthesis'}")

    t = time.perf_counter()
    eval_jobs = [{"id": h["id"], "wav": str(out / "synthesis" / f"{h['id']}.wav"), "text": h["text"],
                  "speaker_prompt": h["prompt_audio"], "reference": h.get("audio", "")} for h in held]
    for j in eval_jobs:
        if not j["reference"]:
            del j["reference"]
    ev = evaluate_run(eval_jobs, out / "evaluation")
    steps["evaluation"] = {"dir": str(out / "evaluation"), "seconds": round(time.perf_counter() - t, 1),
                           "summary": ev.get("summary", {})}
    print(f"[demo] evaluation report: {out / 'evaluation' / 'report.md'}")
    if diagnose:
        steps["diagnosis"] = _diagnose(out, tts, held, eval_jobs, evaluate_run, ev.get("summary", {}))
    return steps


DIAGNOSIS = {  # what each diagnosis run replaces by the truth, upstream of the stages it scores
    "true_codes": "S2M + vocoder on the recording's own codes (the demo codec's), no GPT generation",
    "copy_synthesis": "the vocoder alone on the recording's mel",
}


def _diagnose(out: Path, tts, held: list[dict], eval_jobs: list[dict], evaluate_run, system: dict) -> dict:
    """Where the quality is lost: the held-out sentences again, with the truth fed in below the GPT
    (``true_codes``: ``semantic_codes`` of the recording spoken through S2M and the vocoder, the same prompt)
    and below S2M (``copy_synthesis``: the recording's log-mel through the vocoder), each scored like the
    system's outputs (``diagnosis/<name>/evaluation/report.md``); ``system`` is the system's evaluation summary,
    printed above them."""
    import numpy as np

    from indextts2_jax import audio as audio_lib
    from indextts2_jax.infer.pipeline import write_wav

    result = {}
    for name, what in DIAGNOSIS.items():
        t = time.perf_counter()
        wav_dir = out / "diagnosis" / name
        wav_dir.mkdir(parents=True, exist_ok=True)
        if name == "true_codes":
            jobs = [{"id": h["id"], "text": h["text"], "speaker_prompt": h["prompt_audio"], "seed": 0,
                     "codes": tts.semantic_codes(h["audio"]).tolist()} for h in held]
            for h, (wave, sr, _) in zip(held, tts.synthesize_batch(jobs)):
                write_wav(wav_dir / f"{h['id']}.wav", wave, sr)
        else:
            for h in held:
                wave_22k, _ = audio_lib.load_speaker_prompt(h["audio"], truncate_seconds=None)
                mel = np.asarray(audio_lib.mel_spectrogram(wave_22k, tts.cfg.mel))
                write_wav(wav_dir / f"{h['id']}.wav", tts.vocode(mel), tts.sample_rate)
        jobs = [dict(j, wav=str(wav_dir / f"{j['id']}.wav")) for j in eval_jobs]
        ev = evaluate_run(jobs, wav_dir / "evaluation")
        result[name] = {"what": what, "dir": str(wav_dir), "seconds": round(time.perf_counter() - t, 1),
                        "summary": ev.get("summary", {})}
    rows = [("system", {"summary": system})] + list(result.items())
    print("[demo] diagnosis (held-out sentences; mean WER, speaker similarity, DNSMOS OVRL):")
    for name, r in rows:
        m = r["summary"]
        print(f"[demo]   {name:15s} WER {_mean(m, 'wer'):6.1%}  sim {_mean(m, 'sim_resemblyzer'):.3f}  "
              f"DNSMOS {_mean(m, 'dnsmos_ovrl'):.2f}")
    return result


def _mean(summary: dict, key: str) -> float:
    return float(summary.get(key, {}).get("mean", float("nan")))


def _losses(result: dict) -> dict:
    out = {"stages_dir": result.get("workdir")}
    for stage in DEMO_ORDER:
        if stage in result:
            out[stage] = {"workdir": result[stage]["workdir"], "steps": result[stage]["step"],
                          "first_loss": result[stage].get("first_train", {}).get("loss"),
                          "last_loss": result[stage].get("last_train", {}).get("loss"),
                          "seconds": result[stage].get("seconds")}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--num_utterances", type=int, default=None, help="default: the demo config's 2000")
    parser.add_argument("--scale", type=int, default=1, help="width multiplier of the demo models")
    parser.add_argument("--num_workers", type=int, default=None, help="corpus synthesis processes")
    parser.add_argument("--stages", default=",".join(DEMO_ORDER),
                        help="training stages: a prefix of 'codec,gpt,s2mel,vocoder' (all four: then export, "
                             "synthesis and evaluation follow), or '' (corpus, BPE and configs only)")
    for stage in DEMO_ORDER:
        parser.add_argument(f"--{stage}_steps", type=int, default=None, help="default: the demo config's steps")
    parser.add_argument("--batch", type=int, default=None, help="global batch; default: the demo config's")
    parser.add_argument("--synth_limit", type=int, default=None, help="synthesize only the first N held-out lines")
    parser.add_argument("--no_diagnosis", action="store_true",
                        help="skip the stage-wise diagnosis (true codes through S2M, copy synthesis; ~3 min)")
    args = parser.parse_args(argv)
    stages = tuple(s for s in args.stages.split(",") if s)
    steps = {s: getattr(args, f"{s}_steps") for s in DEMO_ORDER if getattr(args, f"{s}_steps")}
    run(args.workdir, args.num_utterances, args.scale, args.num_workers, stages, steps, args.batch, args.synth_limit,
        diagnose=not args.no_diagnosis)
    return 0


if __name__ == "__main__":
    sys.exit(main())
