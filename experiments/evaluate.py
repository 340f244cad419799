"""Score synthesized speech and write a report (markdown, JSON, PNG plots).

    python -m experiments.evaluate --jobs jobs.jsonl --out DIR [--metrics asr,speaker,dnsmos,reference,duration]
                                   [--campplus campplus_cn_common.bin] [--recognizer zh=my_asr:make]
    python -m experiments.evaluate --dir WAVS/ --prompt voice.wav --out DIR   # WAVS/x.wav + WAVS/x.txt pairs

Each jobs line is a JSON object: ``wav`` (the synthesized file), ``text``, ``speaker_prompt`` (or ``prompt``),
optionally ``reference`` (a recording of the same text), ``language`` ("en" | "zh"; default: detected),
``duration_seconds`` (the requested duration) and ``id``. Relative paths are read from the jobs file's folder.
The report lands in ``DIR/report.md``, ``DIR/report.json`` and ``DIR/plots/``; the table is also printed.
Missing or unreadable files give error rows; the exit status is 0 unless every utterance failed.
"""

from __future__ import annotations

import argparse
import sys

from indextts2_jax.eval import ALL_METRICS, evaluate, items_from_dir, load_jobs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--jobs", help="JSONL file, one utterance per line")
    src.add_argument("--dir", help="folder of *.wav files with *.txt (or *.lab) texts beside them")
    p.add_argument("--prompt", help="speaker prompt for every file of --dir")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--metrics", default=",".join(ALL_METRICS),
                   help=f"comma-separated metric groups (default: all of {','.join(ALL_METRICS)})")
    p.add_argument("--campplus", help="official campplus_cn_common.bin: adds CAM++ speaker similarity (needs torch)")
    p.add_argument("--recognizer", action="append", default=[], metavar="LANG=MODULE:FACTORY",
                   help="ASR for a language, e.g. zh=my_asr:make (repeatable): FACTORY(texts) must return a\n"
                        "callable(16 kHz float32 wave) -> transcript; zh is scored by CER. English defaults to\n"
                        "pocketsphinx; a language without a recognizer gets no WER/CER")
    p.add_argument("--lm_texts", help="text file, one sentence a line, added to the English ASR's language model\n"
                                      "(default: only the evaluated texts)")
    p.add_argument("--no_plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--worst", type=int, default=3, help="mel images of the N worst utterances per metric")
    p.add_argument("--quiet", action="store_true", help="no per-utterance progress lines")
    return p


def load_recognizers(specs: list[str], items) -> dict:
    """``LANG=module:factory`` specs -> {lang: factory(texts of that language)}."""
    import importlib

    from indextts2_jax.errors import ConfigError
    from indextts2_jax.eval.runner import item_language

    recognizers = {}
    for spec in specs:
        lang, sep, target = spec.partition("=")
        module_name, sep2, attr = target.partition(":")
        if not (sep and sep2 and lang and module_name and attr):
            raise ConfigError(f"--recognizer {spec!r}: expected LANG=MODULE:FACTORY")
        factory = getattr(importlib.import_module(module_name), attr)
        recognizers[lang] = factory([it.text for it in items if item_language(it) == lang])
    return recognizers


def run(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    items = load_jobs(args.jobs) if args.jobs else items_from_dir(args.dir, args.prompt)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    lm_texts = []
    if args.lm_texts:
        with open(args.lm_texts, encoding="utf-8") as f:
            lm_texts = [line.strip() for line in f if line.strip()]
    report = evaluate(items, out_dir=args.out, metrics=metrics, campplus=args.campplus,
                      recognizers=load_recognizers(args.recognizer, items), lm_texts=lm_texts, plots=not args.no_plots,
                      worst_count=args.worst, progress=not args.quiet)
    from indextts2_jax.eval.report import markdown_table

    print(markdown_table(report["summary"], report["corpus"]))
    counts = report["counts"]
    print(f"\n{counts['ok']} ok, {counts['partial']} partial, {counts['error']} failed; "
          f"{report['timing']['per_utterance']:.2f} s per utterance; report: {report['files']['markdown']}")
    for row in report["rows"]:
        if row.get("error"):
            print(f"  {row['id']}: {row['error']}", file=sys.stderr)
    return 1 if counts["error"] == len(report["rows"]) else 0


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
