"""The demo recipe: the main job on the embedded default.

    python -m experiments.demo --workdir runs/demo [--num_utterances 2000] [--scale 1]

Steps (each skipped when its output already exists, so a re-run resumes):
  1. the demo corpus: ~2000 utterances by 12 espeak-ng voices (``data_pipeline.demo_corpus``),
     22.05 kHz wavs and ``corpus/manifest.jsonl``; nothing is downloaded;
  2. a held-out list (``heldout.jsonl``: sentences and a prompt voice for the final synthesis);
  3. a SentencePiece BPE tokenizer trained on the training sentences (``bpe.model``);
  4. the resolved config of every training stage (``configs/<stage>.json``);
  5. the training stages that exist (``indextts2_jax.train.recipe.run_demo_stages``): preprocessing
     to ArrayRecord shards (``text_ids`` + ``mel_stacked``), the codec (index bank) stage, then the
     GPT stage with the frozen demo codec making its target codes (``stages/``).

Status: the S2M and vocoder stages (issue 9), export of a training run and synthesis from it have
not landed yet, so the recipe stops after the GPT stage and says so. Outputs land under
``--workdir``; ``summary.json`` lists them (with the first and last losses of each stage).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path


def run(workdir: str, num_utterances: int | None = None, scale: int = 1, num_workers: int | None = None,
        stages: tuple[str, ...] = ("codec", "gpt"), codec_steps: int | None = None, gpt_steps: int | None = None,
        batch: int | None = None) -> dict:
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
        (cfg_dir / f"{stage}.json").write_text(json.dumps(c.to_dict(), indent=2, sort_keys=True, default=str))
    summary["steps"]["configs"] = {"dir": str(cfg_dir)}

    if stages:
        from indextts2_jax.train.recipe import run_demo_stages

        if tuple(stages) != ("codec", "gpt"):
            raise SystemExit(f"--stages {','.join(stages)}: the demo runs 'codec,gpt' (gpt needs the codec) or ''")
        t = time.perf_counter()
        result = run_demo_stages(out / "stages", manifest=manifest, bpe_model=bpe, scale=scale,
                                 codec_steps=codec_steps, gpt_steps=gpt_steps, batch=batch, num_workers=0)
        summary["steps"]["train"] = {"seconds": round(time.perf_counter() - t, 1), **_losses(result)}
        for stage in ("codec", "gpt"):
            if stage in result:
                first = result[stage].get("first_train", {}).get("loss")
                last = result[stage].get("last_train", {}).get("loss")
                print(f"[demo] {stage} stage: {result[stage]['step']} steps, loss {first} -> {last} "
                      f"({result[stage]['workdir']})")
    done = "codec and GPT stages" if stages else "resolved configs (--stages '')"
    summary["status"] = (f"stopped after the {done}: the S2M and vocoder stages, export of a training run "
                         "and synthesis from it have not landed yet")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"[demo] {summary['status']}. Outputs: {out.resolve()} (summary.json lists them)")
    return summary


def _losses(result: dict) -> dict:
    out = {"stages_dir": result.get("workdir")}
    for stage in ("codec", "gpt"):
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
    parser.add_argument("--stages", default="codec,gpt", help="training stages to run: 'codec,gpt' or '' (none)")
    parser.add_argument("--codec_steps", type=int, default=None, help="default: the demo config's steps")
    parser.add_argument("--gpt_steps", type=int, default=None, help="default: the demo config's steps")
    parser.add_argument("--batch", type=int, default=None, help="global batch; default: the demo config's")
    args = parser.parse_args(argv)
    stages = tuple(s for s in args.stages.split(",") if s)
    run(args.workdir, args.num_utterances, args.scale, args.num_workers, stages, args.codec_steps, args.gpt_steps,
        args.batch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
