"""Objective evaluation of synthesized speech: intelligibility, speaker similarity, quality, duration control.

    from indextts2_jax.eval import evaluate_run
    report = evaluate_run("jobs.jsonl", "eval_out/")     # report.md, report.json, plots/*.png

Modules: :mod:`~indextts2_jax.eval.asr` (pocketsphinx with an LM of the evaluated texts, WER/CER),
:mod:`~indextts2_jax.eval.speaker` (Resemblyzer and CAM++ cosine similarity), :mod:`~indextts2_jax.eval.quality`
(DNSMOS, MCD, F0 RMSE, PESQ, STOI), :mod:`~indextts2_jax.eval.report` (summary with confidence intervals,
markdown/JSON, plots), :mod:`~indextts2_jax.eval.runner` (the run). The metric packages are the ``eval`` extra
(``pip install -e '.[eval]'``); they are imported only when a metric needs them.
"""

from indextts2_jax.eval.runner import ALL_METRICS, EvalItem, evaluate, evaluate_run, items_from_dir, load_jobs

__all__ = ["ALL_METRICS", "EvalItem", "evaluate", "evaluate_run", "items_from_dir", "load_jobs"]
