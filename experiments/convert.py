"""Convert an official IndexTTS-2 model directory into a converted checkpoint (our param format).

    python -m experiments.convert --model_dir checkpoints/IndexTTS-2 --out converted/indextts2 \
        [--w2v_bert DIR --semantic_codec FILE --campplus FILE --bigvgan DIR] [--dtype bfloat16]

Reads config.yaml, gpt.pth, s2mel.pth, bpe.model, the stats/matrices and the auxiliary models
(``hf_cache/`` layout, or the paths given), runs every component's strict converter and writes
``indextts2_jax.convert.official.save_converted``'s format. Needs torch (``pip install -e '.[convert]'``);
nothing is downloaded. Prints the components, their parameter counts and sizes, and the time taken.
"""

from __future__ import annotations

import argparse
import sys
import time

from indextts2_jax.errors import IndexTTS2Error


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="indextts2-convert", description=__doc__.split("\n\n")[0])
    p.add_argument("--model_dir", required=True, help="official model directory (config.yaml, gpt.pth, ...)")
    p.add_argument("--out", required=True, help="output folder of the converted checkpoint")
    p.add_argument("--w2v_bert", help="w2v-BERT 2.0 folder (config.json + model.safetensors)")
    p.add_argument("--semantic_codec", help="MaskGCT semantic codec model.safetensors (file or folder)")
    p.add_argument("--campplus", help="campplus_cn_common.bin (file or folder)")
    p.add_argument("--bigvgan", help="BigVGAN v2 folder (config.json + bigvgan_generator.pt)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="param dtype to store")
    p.add_argument("--no_emotion_text", action="store_true",
                   help="do not copy the text-to-emotion folder (config.yaml qwen_emo_path) into the checkpoint")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from indextts2_jax.convert.official import (
        cast_params,
        convert_official_model_dir,
        format_summary,
        save_converted,
        summarize,
    )

    start = time.time()
    try:
        assets = convert_official_model_dir(args.model_dir, w2v_bert=args.w2v_bert,
                                            semantic_codec=args.semantic_codec, campplus=args.campplus,
                                            bigvgan=args.bigvgan)
        if args.dtype != "float32":
            assets.params = {k: cast_params(v, args.dtype) for k, v in assets.params.items()}
        out = save_converted(assets, args.out, emotion_text=not args.no_emotion_text)
    except (IndexTTS2Error, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"converted {args.model_dir} -> {out}")
    if assets.extra.get("emotion_text_dir") and not args.no_emotion_text:
        print(f"copied the text-to-emotion model {assets.extra['emotion_text_dir']} -> {out / 'emotion_text'}")
    print(format_summary(summarize(assets), time.time() - start))
    return 0


def run() -> None:
    """Console-script entry point (``indextts2-convert``)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
