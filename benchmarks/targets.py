"""The accelerator targets of the open issues in one run, for a short GPU lease.

    python -m benchmarks.targets --out $OUT/targets.jsonl                  # every target: official sizes, bfloat16
    python -m benchmarks.targets --only gpt_decode,s2mel --out t.jsonl     # some of them
    python -m benchmarks.targets --smoke --out /tmp/t.jsonl                # tiny sizes, float32: checks the script

Each target runs in its own subprocess (``--child NAME``) under its own time limit, so a slow compile or a
crash costs that target alone; each result line is appended to ``--out`` as soon as it exists (a lease that
ends mid-run keeps what was measured), and a table of goal against measurement ends the run.

| name | issue | what | goal |
|---|---|---|---|
| gpt_decode | #3 | UnifiedVoice greedy decode, batch 1 (and 8), 200 codes | >= 1500 tokens/s at batch 1 |
| semantic | #4 | w2v-BERT (17 layers) + codec quantize, 10 s clips, batch 8 (and 1) | >= 500 s of audio / s |
| s2mel | #5 | S2M 25 CFM steps with CFG + BigVGAN for 10 s (860 frames after a 3 s prompt) | < 60 ms |
| synthesize | #6 | end to end, beam 3, 500 codes, 10 s prompt: batch 1; 64 jobs | RTF <= 0.03; >= 300x; < 8 GB peak |
| train_step | #8 | the GPT train step, batch 8, 500 codes + 100 text tokens | >= 45 % MFU |

The benchmark functions are the scripts' own (``benchmarks.gpt_decode.run`` and so on), with the issue's sizes.
The S2M, end-to-end and train-step targets run with cuDNN flash attention (the DiT's, or the GPT's causal
training forward; ``jax.nn.dot_product_attention``) and fall back to our einsum attention if it raises; the
result rows name the attention used.
Compile times are in each result line (``rows``), not in the measured numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    issue: int
    what: str
    timeout_s: int
    run: Callable[[bool], dict]  # smoke -> {"checks": [(label, value, unit, goal_op, goal)], "rows": [...]}


def _dtype(smoke: bool) -> str:
    return "float32" if smoke else "bfloat16"


def _fused_first(smoke: bool, run: Callable[[str], dict]) -> dict:
    """``run(attention)`` with cuDNN flash attention (``jax.nn.dot_product_attention``; the smoke run takes its XLA
    implementation, as a CPU has no cuDNN), and with our einsum attention if that raises (no cuDNN, an unsupported
    shape): each result row says which attention it used, and why the fused one was not."""
    fused = "xla" if smoke else "cudnn"
    note = "" if smoke else _cudnn_probe()  # fails in a second where a failed run could cost minutes
    if note:
        fused = "einsum"
        print(f"# {note}; measuring einsum attention", flush=True)
    try:
        result = run(fused)
    except Exception as e:  # noqa: BLE001 - any failure of the fused path: measure the default one instead
        if fused == "einsum":
            raise
        note = f"{fused} attention failed: {type(e).__name__}: {str(e)[:300]}"
        print(f"# {note}; measuring einsum attention", flush=True)
        fused, result = "einsum", run("einsum")
    result["rows"] = [dict(r, attention=fused, **({"fused_failure": note} if note else {})) for r in result["rows"]]
    return result


def _cudnn_probe() -> str:
    """"" when cuDNN attention compiles and runs at the targets' kinds of shapes (the DiT's key-padded call at
    1118 frames, the GPT's causal call and its gradient at 638 positions; bfloat16), else why not."""
    import jax
    import jax.numpy as jnp

    def padded(q):
        return jax.nn.dot_product_attention(q, q, q, key_value_seq_lengths=jnp.array([1118, 900], jnp.int32),
                                            implementation="cudnn")

    def causal_loss(q):
        return jnp.sum(jax.nn.dot_product_attention(q, q, q, is_causal=True, implementation="cudnn")
                       .astype(jnp.float32))

    try:
        jax.block_until_ready(jax.jit(padded)(jnp.ones((2, 1118, 8, 64), jnp.bfloat16)))
        jax.block_until_ready(jax.jit(jax.grad(causal_loss))(jnp.ones((2, 638, 20, 64), jnp.bfloat16)))
    except Exception as e:  # noqa: BLE001 - any failure: the targets measure einsum attention instead
        return f"cudnn attention probe failed: {type(e).__name__}: {str(e)[:300]}"
    return ""


def _gpt_decode(smoke: bool) -> dict:
    from benchmarks import gpt_decode

    # through the script's own parser: an option added there gets its default here too. The budget is the output
    # (a tight cache), so one cache stage: the staged cache would only add loop bodies to compile
    args = gpt_decode.build_parser().parse_args(
        ["--batch", "1", "8", "--new-tokens", "20" if smoke else "200", "--text-len", "30",
         "--repetition-penalty", "10", "--dtype", _dtype(smoke), "--repeats", "3", "--cache_stage_codes", "0"]
        + (["--tiny"] if smoke else []))
    rows = gpt_decode.run(args)
    b1 = next(r for r in rows if r["batch"] == 1)
    return {"checks": [("decode tokens/s, batch 1", float(b1["tok/s/seq"]), "tok/s", ">=", 1500.0)], "rows": rows}


def _semantic(smoke: bool) -> dict:
    from benchmarks import semantic

    rows = semantic.run("tiny" if smoke else "official", [1, 8], 2.0 if smoke else 10.0, _dtype(smoke), 3,
                        ["total"])
    b8 = next(r for r in rows if r["batch"] == 8)
    return {"checks": [("audio s per s, batch 8", b8["audio_s_per_s"], "x", ">=", 500.0)], "rows": rows}


def _s2mel(smoke: bool) -> dict:
    from benchmarks import s2mel_vocoder

    def run(attention: str) -> dict:
        rows = s2mel_vocoder.run("tiny" if smoke else "official", _dtype(smoke), 3, attention)
        total = next(r for r in rows if r["stage"] == "S2M + BigVGAN")
        return {"checks": [("S2M 25 steps + BigVGAN, 10 s", total["seconds"] * 1e3, "ms", "<", 60.0)], "rows": rows}

    return _fused_first(smoke, run)


def _synthesize(smoke: bool) -> dict:
    from benchmarks import synthesize

    def run(attention: str) -> dict:
        argv = (["--size", "tiny", "--tokens", "40", "--prompt_seconds", "2", "--diffusion_steps", "4", "--jobs", "4"]
                if smoke else ["--dtype", "bfloat16", "--jobs", "64"]) + ["--attention", attention]
        rows = synthesize.main(argv)
        one = next(r for r in rows if r["run"] == "batch 1")
        many = rows[-1]  # the batched row, second call
        return {"checks": [("end-to-end RTF, batch 1", one["rtf"], "", "<=", 0.03),
                           (f"real-time factor x, {many['run']}", 1.0 / many["rtf"], "x", ">=", 300.0),
                           ("peak device memory, batch 1", one["peak_gb"], "GB", "<", 8.0)],
                "rows": rows}

    return _fused_first(smoke, run)


def train_step_args(smoke: bool, attention: str = "einsum") -> argparse.Namespace:
    """The train-step target's arguments, through the script's own parser (as for the decode target)."""
    from benchmarks import train_step

    return train_step.build_parser().parse_args(
        ["--batch", "8", "--text-len", "100", "--mel-len", "50" if smoke else "500", "--prompt-len",
         "40" if smoke else "300", "--dtype", _dtype(smoke), "--attention", attention, "--warmup", "2", "--steps", "5"]
        + (["--tiny"] if smoke else []))


def _train_step(smoke: bool) -> dict:
    from benchmarks import train_step

    def run(attention: str) -> dict:
        row = train_step.run(train_step_args(smoke, attention))
        mfu = float(row["MFU"].rstrip("%")) if row["MFU"] else float("nan")
        return {"checks": [("GPT train step MFU", mfu, "%", ">=", 45.0)], "rows": [row]}

    return _fused_first(smoke, run)


TARGETS = {t.name: t for t in (
    Target("gpt_decode", 3, "UnifiedVoice decode, official size", 150, _gpt_decode),
    Target("semantic", 4, "w2v-BERT + codec quantize, official size", 120, _semantic),
    Target("s2mel", 5, "S2M 25 steps + BigVGAN, official size", 150, _s2mel),
    Target("train_step", 8, "GPT train step, official size", 150, _train_step),
    Target("synthesize", 6, "end to end, official sizes", 300, _synthesize),
)}


def _passes(value: float, op: str, goal: float) -> bool:
    return {">=": value >= goal, "<=": value <= goal, "<": value < goal}[op]


def _child(name: str, smoke: bool, out: str) -> None:
    import jax

    t0 = time.perf_counter()
    result = TARGETS[name].run(smoke)
    dev = jax.devices()[0]
    line = {"name": name, "issue": TARGETS[name].issue, "device": f"{dev.platform}:{dev.device_kind}",
            "jax": jax.__version__, "smoke": smoke, "seconds": round(time.perf_counter() - t0, 1),
            "checks": [dict(label=c[0], value=c[1], unit=c[2], goal=f"{c[3]} {c[4]:g}",
                            passed=_passes(c[1], c[3], c[4])) for c in result["checks"]],
            "rows": result["rows"]}
    with open(out, "a") as f:
        f.write(json.dumps(line, default=str) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="JSON lines file the results are appended to")
    p.add_argument("--only", default="", help=f"comma-separated subset of {list(TARGETS)}")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, float32 (checks the script, e.g. on CPU)")
    p.add_argument("--timeout_scale", type=float, default=1.0, help="multiplies every target's time limit")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args.child, args.smoke, args.out)
        return 0
    names = [n for n in args.only.split(",") if n] or list(TARGETS)
    unknown = set(names) - set(TARGETS)
    if unknown:
        p.error(f"unknown targets {sorted(unknown)}; known: {list(TARGETS)}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    status = {}
    for name in names:
        limit = TARGETS[name].timeout_s * args.timeout_scale
        cmd = [sys.executable, "-m", "benchmarks.targets", "--child", name, "--out", args.out]
        cmd += ["--smoke"] if args.smoke else []
        t0 = time.perf_counter()
        print(f"# {name} (#{TARGETS[name].issue}): {TARGETS[name].what}, limit {limit:.0f} s", flush=True)
        try:
            res = subprocess.run(cmd, timeout=limit, env=dict(os.environ, PYTHONUNBUFFERED="1"))
            status[name] = "ok" if res.returncode == 0 else f"exit {res.returncode}"
        except subprocess.TimeoutExpired:
            status[name] = f"timed out after {limit:.0f} s"
        print(f"# {name}: {status[name]} in {time.perf_counter() - t0:.0f} s", flush=True)
    results = {}
    if Path(args.out).exists():
        for line in Path(args.out).read_text().splitlines():
            r = json.loads(line)
            results[r["name"]] = r  # the last line per target
    print("\n| issue | target | measured | goal | met | device |")
    print("|---|---|---|---|---|---|")
    for name in names:
        r = results.get(name)
        if r is None or status[name] != "ok":
            print(f"| #{TARGETS[name].issue} | {name} | {status[name]} | | | |")
            continue
        for c in r["checks"]:
            print(f"| #{r['issue']} | {c['label']} | {c['value']:.4g} {c['unit']} | {c['goal']} | "
                  f"{'yes' if c['passed'] else 'no'} | {r['device']}{' (smoke)' if r['smoke'] else ''} |")
    return 0 if all(s == "ok" for s in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
