"""The main job (demo recipe) at its smallest size: corpus, held-out list, BPE, resolved configs."""

import json

from experiments import demo


def test_demo_recipe_smallest(tmp_path):
    summary = demo.run(str(tmp_path), num_utterances=40, num_workers=1, codec_steps=3, gpt_steps=3, batch=4)
    assert summary["steps"]["corpus"]["utterances"] == 40
    assert summary["steps"]["corpus"]["speakers"] >= 10
    assert (tmp_path / "bpe.model").stat().st_size > 0
    held = [json.loads(x) for x in open(tmp_path / "heldout.jsonl")]
    assert held and all(h["text"] and h["prompt_audio"].endswith(".wav") for h in held)
    for stage in ("codec", "gpt", "s2mel", "vocoder"):
        cfg = json.loads((tmp_path / "configs" / f"{stage}.json").read_text())
        assert cfg["stage"] == stage and cfg["data"]["manifest"].endswith("manifest.jsonl")
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert "not landed" in saved["status"]
    train = saved["steps"]["train"]
    for stage in ("codec", "gpt"):
        assert train[stage]["steps"] == 3 and train[stage]["last_loss"] is not None
        assert (tmp_path / "stages" / stage / "checkpoints").is_dir()
    # a re-run resumes: nothing is rebuilt or retrained (the trainers find their final checkpoints)
    again = demo.run(str(tmp_path), num_utterances=40, num_workers=1, codec_steps=3, gpt_steps=3, batch=4)
    assert again["steps"]["corpus"]["utterances"] == 40
    assert again["steps"]["train"]["gpt"]["steps"] == 3
