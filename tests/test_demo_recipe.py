"""The main job (demo recipe) end to end at its smallest size: corpus, held-out list, BPE, configs, the
four training stages (1 step each: one length bucket, so one compiled step per stage), export, synthesis of
a held-out sentence, its evaluation report, the stage-wise diagnosis (true codes through S2M, copy synthesis).

The stages' own behaviour (losses fall, sharded == single device, resume) is tested in
tests/test_train_*.py on synthetic shards; this test checks that the recipe chains them into a bundle
that synthesizes, and that a re-run resumes instead of rebuilding."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import soundfile as sf

from experiments import demo
from tests.subproc import cpu_env

REPO = Path(__file__).resolve().parents[1]

_RUN = textwrap.dedent(
    """
    import sys
    from experiments import demo
    steps = {"codec": 1, "gpt": 1, "s2mel": 1, "vocoder": 1}
    # No evaluation batches and no samples: each stage's evaluation and samples are tested with the stage
    # (tests/test_train_*.py); here they would only compile more programs. A smaller BigVGAN (one resblock
    # kernel, three upsampling stages of 8, 8, 4 = 256x): the recipe's chaining does not depend on the
    # vocoder's depth, and the demo's (two kernels, six stages) took ~35 s of this test to trace and compile.
    overrides = {"log.num_eval_batches": 0, "log.samples": False,
                 "aux.bigvgan.resblock_kernel_sizes": [3], "aux.bigvgan.resblock_dilation_sizes": [[1, 3]],
                 "aux.bigvgan.upsample_rates": [8, 8, 4], "aux.bigvgan.upsample_kernel_sizes": [16, 16, 8]}
    demo.run(sys.argv[1], num_utterances=24, num_workers=1, steps=steps, batch=4, synth_limit=1,
             overrides=overrides)
    """
)


def test_demo_recipe_end_to_end_smallest(tmp_path):
    # Its own process, compiled with LLVM -O0: the ~10 programs of the recipe compile in a fraction of
    # the time and run for a few steps only (the stages' numerics are tested in tests/test_train_*.py).
    env = cpu_env()
    proc = subprocess.run([sys.executable, "-c", _RUN, str(tmp_path)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    s = summary["steps"]
    assert s["corpus"]["utterances"] == 24 and s["corpus"]["speakers"] >= 10
    assert (tmp_path / "bpe.model").stat().st_size > 0
    held = [json.loads(x) for x in open(tmp_path / "heldout.jsonl")]
    train_ids = {json.loads(x)["id"] for x in open(tmp_path / "train_manifest.jsonl")}
    assert held and not {h["id"] for h in held} & train_ids  # held-out lines are never trained on
    for stage in ("codec", "gpt", "s2mel", "vocoder"):
        cfg = json.loads((tmp_path / "configs" / f"{stage}.json").read_text())
        assert cfg["stage"] == stage and cfg["log"]["num_eval_batches"] == 0  # the resolved configs say so
        assert cfg["aux"]["bigvgan"]["upsample_rates"] == [8, 8, 4] and cfg["log"]["samples"] is False
        assert s["train"][stage]["steps"] == 1 and np.isfinite(s["train"][stage]["last_loss"])
    bundle = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert bundle["config"]["aux"]["bigvgan"]["upsample_rates"] == [8, 8, 4]  # the vocoder that was trained
    wav = tmp_path / "synthesis" / f"{held[0]['id']}.wav"
    audio, sr = sf.read(wav)
    assert sr == 22050 and audio.size > 0 and np.isfinite(audio).all()
    assert (tmp_path / "evaluation" / "report.md").exists() and (tmp_path / "evaluation" / "report.json").exists()
    # the stage-wise diagnosis: the recording's codes through S2M + vocoder, its mel through the vocoder
    for name in ("true_codes", "copy_synthesis"):
        d = tmp_path / "diagnosis" / name
        audio, sr = sf.read(d / f"{held[0]['id']}.wav")
        assert sr == 22050 and audio.size > 0 and np.isfinite(audio).all(), name
        assert (d / "evaluation" / "report.json").exists() and s["diagnosis"][name]["summary"], name
    reference, _ = sf.read(held[0]["audio"])
    copy, _ = sf.read(tmp_path / "diagnosis" / "copy_synthesis" / f"{held[0]['id']}.wav")
    assert copy.size == (reference.size // 256) * 256  # one hop per mel frame
    assert summary["status"].startswith("complete")


def test_demo_recipe_configs_only_and_rerun(tmp_path):
    summary = demo.run(str(tmp_path), num_utterances=24, num_workers=1, stages=())
    assert "train" not in summary["steps"] and "stopped after resolved configs" in summary["status"]
    again = demo.run(str(tmp_path), num_utterances=24, num_workers=1, stages=())
    assert again["steps"]["corpus"]["utterances"] == 24
