"""Evaluation report: summary table (means with 95 % confidence intervals), markdown/JSON files and PNG plots.

Confidence intervals use the normal approximation: mean +- 1.96 * s / sqrt(n), with s the sample standard
deviation (ddof=1); with n = 1 the interval is undefined (reported as null / "n/a"). Utterances where a metric
could not be computed (error, no reference, unvoiced) are left out of that metric's n.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["METRICS", "summarize", "markdown_table", "write_report", "plot_histograms", "plot_worst_mels",
           "worst_rows"]

Z_95 = 1.959963984540054

# metric key -> (label, unit, higher_is_better, format)
METRICS: dict[str, tuple[str, str, bool, str]] = {
    "wer": ("WER", "%", False, "{:.2f}"),
    "cer": ("CER", "%", False, "{:.2f}"),
    "oov_rate": ("OOV words", "%", False, "{:.2f}"),
    "sim_resemblyzer": ("Speaker sim. (Resemblyzer)", "cos", True, "{:.4f}"),
    "sim_campplus": ("Speaker sim. (CAM++)", "cos", True, "{:.4f}"),
    "dnsmos_ovrl": ("DNSMOS OVRL", "1-5", True, "{:.3f}"),
    "dnsmos_sig": ("DNSMOS SIG", "1-5", True, "{:.3f}"),
    "dnsmos_bak": ("DNSMOS BAK", "1-5", True, "{:.3f}"),
    "dnsmos_p808": ("DNSMOS P.808", "1-5", True, "{:.3f}"),
    "mcd": ("MCD", "dB", False, "{:.3f}"),
    "f0_rmse": ("F0 RMSE", "Hz", False, "{:.2f}"),
    "vde": ("Voicing decision error", "%", False, "{:.2f}"),
    "pesq": ("PESQ (wb)", "MOS", True, "{:.3f}"),
    "stoi": ("STOI", "0-1", True, "{:.4f}"),
    "duration": ("Produced duration", "s", True, "{:.3f}"),
    "duration_abs_error": ("Duration error (abs. produced - requested)", "s", False, "{:.3f}"),
    "duration_rel_error": ("Duration relative error", "%", False, "{:.2f}"),
}
# Stored as fractions in rows/JSON, shown in percent.
PERCENT = {"wer", "cer", "oov_rate", "vde", "duration_rel_error"}


def _finite(values) -> np.ndarray:
    arr = np.asarray([v for v in values if v is not None], np.float64)
    return arr[np.isfinite(arr)]


def summarize(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] | None = None) -> dict[str, dict]:
    """Per metric: {n, mean, std, ci95 (half width), ci95_low, ci95_high, min, max, median} over the rows."""
    metrics = list(metrics) if metrics is not None else list(METRICS)
    out = {}
    for key in metrics:
        values = _finite(r.get(key) for r in rows)
        if values.size == 0:
            continue
        n = int(values.size)
        mean = float(values.mean())
        std = float(values.std(ddof=1)) if n > 1 else None
        half = Z_95 * std / math.sqrt(n) if std is not None else None
        out[key] = {
            "n": n, "mean": mean, "std": std, "ci95": half,
            "ci95_low": mean - half if half is not None else None,
            "ci95_high": mean + half if half is not None else None,
            "min": float(values.min()), "max": float(values.max()), "median": float(np.median(values)),
        }
    return out


def _fmt(key: str, value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    scale = 100.0 if key in PERCENT else 1.0
    return METRICS.get(key, (key, "", True, "{:.4g}"))[3].format(value * scale)


def markdown_table(summary: Mapping[str, Mapping], corpus: Mapping[str, Any] | None = None) -> str:
    """The summary as a markdown table: metric, unit, n, mean +- 95 % CI, median, min, max."""
    lines = ["| metric | unit | n | mean ± 95% CI | median | min | max |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for key, s in summary.items():
        label, unit, better, _ = METRICS.get(key, (key, "", True, ""))
        arrow = "↑" if better else "↓"
        if key == "duration":
            arrow = ""
        ci = f" ± {_fmt(key, s['ci95'])}" if s["ci95"] is not None else ""
        lines.append(f"| {label} {arrow} | {unit} | {s['n']} | {_fmt(key, s['mean'])}{ci} | {_fmt(key, s['median'])} "
                     f"| {_fmt(key, s['min'])} | {_fmt(key, s['max'])} |".replace("  ", " "))
    for key in ("wer", "cer"):
        value = (corpus or {}).get(f"corpus_{key}")
        if value is not None:
            lines.append(f"| {METRICS[key][0]}, corpus level (all errors / all reference tokens) ↓ | % "
                         f"| {corpus[f'corpus_{key}_utterances']} | {_fmt(key, value)} | | | |")
    return "\n".join(lines)


def _row_cell(key: str, value) -> str:
    if isinstance(value, float):
        return _fmt(key, value) if key in METRICS else f"{value:.4g}"
    if value is None:
        return ""
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 120 or key == "error" else text[:117] + "..."


def markdown_rows(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    for r in rows:
        lines.append("| " + " | ".join(_row_cell(c, r.get(c)) for c in columns) + " |")
    return "\n".join(lines)


MIN_HISTOGRAM_VALUES = 2  # one value makes a one-bar histogram: the report's table already says it


def plot_histograms(rows: Sequence[Mapping[str, Any]], out_dir: Path) -> dict[str, str]:
    """One histogram PNG per metric with at least ``MIN_HISTOGRAM_VALUES`` finite values: {metric: path}."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for key, (label, unit, _, _) in METRICS.items():
        values = _finite(r.get(key) for r in rows)
        if values.size < MIN_HISTOGRAM_VALUES:
            continue
        if key in PERCENT:
            values = values * 100.0
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
        ax.hist(values, bins=min(30, max(5, values.size // 2)), color="#4878a8", edgecolor="white")
        ax.axvline(values.mean(), color="#c44e52", linestyle="--", label=f"mean {values.mean():.3g}")
        ax.set_xlabel(f"{label} ({unit})")
        ax.set_ylabel("utterances")
        ax.set_title(f"{label}: n = {values.size}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"hist_{key}.png"
        fig.savefig(path)
        plt.close(fig)
        files[key] = str(path)
    return files


def worst_rows(rows: Sequence[Mapping[str, Any]], key: str, count: int = 3) -> list[Mapping[str, Any]]:
    """The ``count`` rows with the worst finite ``key`` (highest when lower is better, else lowest)."""
    better_high = METRICS[key][2]
    scored = [r for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    scored.sort(key=lambda r: r[key], reverse=not better_high)
    return scored[:count]


def plot_worst_mels(rows: Sequence[Mapping[str, Any]], load_wave, out_dir: Path, key: str, count: int = 3,
                    sample_rate: int = 16000) -> list[str]:
    """Log-mel images (PNG) of the ``count`` worst utterances by ``key``; ``load_wave(row)`` gives the 16 kHz wave."""
    import librosa
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for rank, r in enumerate(worst_rows(rows, key, count), 1):
        wave = load_wave(r)
        mel = librosa.power_to_db(librosa.feature.melspectrogram(y=wave, sr=sample_rate, n_fft=1024, hop_length=256,
                                                                 n_mels=80), ref=np.max)
        fig, ax = plt.subplots(figsize=(8, 3), dpi=100)
        im = ax.imshow(mel, origin="lower", aspect="auto", cmap="magma",
                       extent=(0, len(wave) / sample_rate, 0, mel.shape[0]))
        fig.colorbar(im, ax=ax, format="%+.0f dB")
        value = _fmt(key, r[key]) + ("%" if key in PERCENT else "")
        text = str(r.get("text", ""))
        ax.set_title(f"worst {METRICS[key][0]} #{rank}: {r['id']} ({value})\n{text[:90]}", fontsize=9)
        if r.get("hypothesis") is not None and key in ("wer", "cer"):
            ax.set_xlabel(f"heard: {str(r['hypothesis'])[:100]}", fontsize=8)
        else:
            ax.set_xlabel("seconds")
        ax.set_ylabel("mel band")
        fig.tight_layout()
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(r["id"]))
        path = out_dir / f"worst_{key}_{rank}_{safe}.png"
        fig.savefig(path)
        plt.close(fig)
        files.append(str(path))
    return files


def _json_default(x):
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    return str(x)


def _json_clean(x):
    """NaN/inf -> None so the JSON is standard."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_clean(v) for v in x]
    return x


ROW_COLUMNS = ("id", "status", "wer", "cer", "sim_resemblyzer", "sim_campplus", "dnsmos_ovrl", "mcd", "f0_rmse",
               "pesq", "stoi", "duration", "duration_requested", "duration_abs_error", "text", "hypothesis", "error")


def write_report(report: dict, out_dir: str | os.PathLike) -> dict[str, str]:
    """Write report.json and report.md into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "report.json"
    json_path.write_text(json.dumps(_json_clean(report), indent=2, default=_json_default, ensure_ascii=False) + "\n",
                         encoding="utf-8")
    rows = report["rows"]
    columns = [c for c in ROW_COLUMNS if any(r.get(c) is not None for r in rows)]
    n_err = sum(r.get("status") == "error" for r in rows)
    n_partial = sum(r.get("status") == "partial" for r in rows)
    md = [
        "# Evaluation report", "",
        f"{len(rows)} utterances ({len(rows) - n_err - n_partial} complete, {n_partial} partial, {n_err} failed). "
        "Means with 95 % confidence intervals (mean ± 1.96·s/√n, normal approximation). "
        "WER/CER from pocketsphinx with a language model built from the evaluated texts "
        "(closed vocabulary: compare systems on the same texts only).", "",
        markdown_table(report["summary"], report.get("corpus")), "",
    ]
    plots = report.get("plots", {})
    if plots:
        md += ["## Plots", ""]
        for key, path in plots.get("histograms", {}).items():
            md.append(f"![{key}]({os.path.relpath(path, out)})")
        for key, paths in plots.get("worst", {}).items():
            md += ["", f"Worst by {METRICS[key][0]}:", ""]
            md += [f"![worst {key}]({os.path.relpath(p, out)})" for p in paths]
        md.append("")
    md += ["## Utterances", "", markdown_rows(rows, columns), ""]
    md_path = out / "report.md"
    md_path.write_text("\n".join(md), encoding="utf-8")
    return {"json": str(json_path), "markdown": str(md_path)}
