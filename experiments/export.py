"""Export an inference bundle from a converted checkpoint, an official model directory or training workdirs.

    python -m experiments.export --checkpoint converted/indextts2 --out bundles/indextts2 \
        [--dtype bfloat16] [--serialize_functions] [--buckets bigvgan=256;1024,s2mel_estimator=256;1024] \
        [--platforms cpu,cuda]
    python -m experiments.export --workdir runs/demo/stages --out bundles/demo [--bpe_model runs/demo/bpe.model]
    python -m experiments.export --workdir runs/codec --workdir runs/gpt --workdir runs/s2mel \
        --workdir runs/vocoder --out bundles/mine

``--checkpoint`` is a folder written by ``experiments.convert`` (``converted.json``), or an official
model directory (converted on the fly, cached in ``<dir>/jax_cache``). ``--workdir`` (repeatable) is a
training run's workdir or a recipe root holding ``codec/ gpt/ s2mel/ vocoder/`` (or ``stages/<stage>/``):
the latest checkpoint of every stage goes into the bundle (``indextts2_jax.export.assets_from_workdirs``;
the BPE model from the GPT stage's config unless ``--bpe_model``). Stages trained on real w2v-BERT features
need ``--base`` (a converted official checkpoint or official model directory) for w2v-BERT, its statistics,
the pretrained CAMPPlus and the emotion matrices. The bundle format and the exported
functions are described in ``indextts2_jax.export``. Prints the components, parameter counts, sizes and
the time taken.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from indextts2_jax.errors import IndexTTS2Error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="indextts2-export", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="converted checkpoint folder (or an official model directory)")
    p.add_argument("--workdir", action="append", default=[],
                   help="a training stage's workdir or a recipe root holding codec/ gpt/ s2mel/ vocoder/ (repeatable)")
    p.add_argument("--base", default=None,
                   help="with --workdir, for stages trained on w2v-BERT features: a converted official checkpoint / "
                        "official model dir / bundle giving w2v-BERT, its statistics, CAMPPlus and emotion matrices")
    p.add_argument("--bpe_model", default=None,
                   help="with --workdir: the SentencePiece model (default: the GPT stage config's data.bpe_model)")
    p.add_argument("--out", required=True, help="bundle output folder")
    em = p.add_mutually_exclusive_group()
    em.add_argument("--emotion_text_model", default=None,
                    help="text-to-emotion model folder to include (default: the one the checkpoint names, if any)")
    em.add_argument("--no_emotion_text", action="store_true", help="leave the text-to-emotion model out")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="param dtype of the bundle")
    p.add_argument("--serialize_functions", action="store_true",
                   help="also write jax.export functions (BigVGAN, S2M estimator step) for fixed frame buckets")
    p.add_argument("--platforms", default="",
                   help="platforms to lower the exported functions for, e.g. 'cpu,cuda' (default: this machine's)")
    p.add_argument("--buckets", default="",
                   help="frame buckets of the exported functions, e.g. 'bigvgan=256;1024,s2mel_estimator=512'")
    return p.parse_args(argv)


def parse_buckets(text: str) -> dict[str, tuple[int, ...]] | None:
    if not text:
        return None
    out = {}
    for item in text.split(","):
        name, _, values = item.partition("=")
        try:
            out[name.strip()] = tuple(int(v) for v in values.replace("+", ";").split(";") if v.strip())
        except ValueError:
            raise SystemExit(f"error: --buckets item {item!r} is not name=N;N;...") from None
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if bool(args.workdir) == bool(args.checkpoint):
        print("error: give either --checkpoint (a converted checkpoint or an official model directory) or --workdir "
              "(training runs)", file=sys.stderr)
        return 2
    from indextts2_jax.convert.official import format_summary, load_assets
    from indextts2_jax.export import assets_from_workdirs, export_bundle, load_bundle

    start = time.time()
    src = ", ".join(args.workdir) if args.workdir else Path(args.checkpoint)
    try:
        if args.workdir:
            assets = assets_from_workdirs(args.workdir, bpe_model=args.bpe_model, base=args.base)
        else:
            assets = load_assets(src)  # a converted checkpoint, an official directory (or another bundle)
        emotion_text = False if args.no_emotion_text else args.emotion_text_model
        out = export_bundle(assets, args.out, dtype=args.dtype, serialize_functions=args.serialize_functions,
                            emotion_text=emotion_text,
                            buckets=parse_buckets(args.buckets),
                            platforms=tuple(x.strip() for x in args.platforms.split(",") if x.strip()) or None)
        bundle = load_bundle(out)  # re-read: checks every hash
    except (IndexTTS2Error, FileNotFoundError, FileExistsError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = [{"component": k, "params": c["num_params"], "bytes": c["bytes"], "dtype": c["dtype"]}
            for k, c in _components(out).items()]
    print(f"exported {src} -> {out} ({args.dtype})")
    print(format_summary(rows, time.time() - start))
    if bundle.extra.get("emotion_text_dir"):
        print(f"text-to-emotion model: {bundle.extra['emotion_text_dir']}")
    fns = sorted(bundle.extra.get("functions", {}))
    if fns:
        print(f"exported functions: {', '.join(fns)}")
    return 0


def _components(out: Path) -> dict:
    import json

    return json.loads((out / "bundle.json").read_text())["components"]


def run() -> None:
    """Console-script entry point (``indextts2-export``)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
