"""Text-to-emotion alone: what the QwenEmotion model reads in a text (the 8 weights synthesis would use).

    python -m experiments.emotion_text --model checkpoints/IndexTTS-2 --text "I can't believe you did that!"
    python -m experiments.emotion_text --model qwen0.6bemo4-merge/ --text_file lines.txt --json

``--model``: the emotion model folder itself (a Qwen3 causal LM: config.json, tokenizer.json, ...), or an
official model directory / converted checkpoint / bundle that holds or names one. One line per text
(``--text_file``: one text per line) with the weights in vector order (happy angry sad afraid disgusted
melancholic surprised calm); ``--json`` prints each result with the model's raw answer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="indextts2-emotion-text", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="emotion model folder, or a model dir / checkpoint / bundle")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the text to read")
    src.add_argument("--text_file", help="UTF-8 file, one text per line")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--greedy", action="store_true", help="greedy decoding instead of the folder's sampling")
    p.add_argument("--max_new_tokens", type=int, default=256)
    p.add_argument("--json", action="store_true", help="one JSON object per text")
    return p


def emotion_folder(model: str) -> Path:
    """The emotion model folder that ``model`` is or names (ModelDirectoryError if none)."""
    from indextts2_jax.errors import ModelDirectoryError

    root = Path(model)
    if (root / "config.json").is_file() and (root / "tokenizer.json").is_file():
        return root
    for kind in ("bundle.json", "converted.json"):
        if (root / kind).is_file():
            meta = json.loads((root / kind).read_text())
            if meta.get("emotion_text"):
                return root / meta["emotion_text"]
            raise ModelDirectoryError(f"{root} holds no text-to-emotion model (exported without one)")
    if (root / "config.yaml").is_file():
        from indextts2_jax.convert.official import emotion_text_dir
        from indextts2_jax.official_config import load_official_config

        found = emotion_text_dir(load_official_config(root / "config.yaml"), root.resolve())
        if found:
            return Path(found)
        raise ModelDirectoryError(f"{root}: config.yaml names no text-to-emotion folder that exists (qwen_emo_path)")
    raise ModelDirectoryError(f"{root}: not an emotion model folder, model directory, converted checkpoint or bundle")


def main(argv=None) -> list[dict]:
    args = build_parser().parse_args(argv)
    from indextts2_jax.errors import IndexTTS2Error
    from indextts2_jax.infer.emotion_text import QwenEmotion

    try:
        texts = ([args.text] if args.text is not None else
                 [t for t in Path(args.text_file).read_text(encoding="utf-8").splitlines() if t.strip()])
        model = QwenEmotion(emotion_folder(args.model), max_new_tokens=args.max_new_tokens)
        results = []
        for text in texts:
            r = model(text, seed=args.seed, greedy=args.greedy)
            results.append({"text": text, "vector": r.vector, "scores": r.scores, "reply": r.reply,
                            "tokens": r.tokens, "finished": r.finished, "seconds": round(r.seconds, 3)})
    except (IndexTTS2Error, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    for r in results:
        if args.json:
            print(json.dumps(r, ensure_ascii=False))
        else:
            print(" ".join(f"{v:.3g}" for v in r["vector"]) + f"\t{r['text']}")
    return results


def run() -> None:
    """Console-script entry point (``indextts2-emotion-text``)."""
    main()


if __name__ == "__main__":
    main()
