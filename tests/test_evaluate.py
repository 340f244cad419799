"""Tests of the evaluation tools (indextts2_jax.eval, experiments.evaluate) on real espeak-ng audio of the demo corpus.

The metric packages (pocketsphinx, resemblyzer, speechmos, pesq, pystoi, jiwer-free WER, matplotlib) are in the
``dev`` extra, so CI runs these tests; they need no network (every model ships in its wheel).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_pipeline.demo_corpus import build_demo_corpus
from indextts2_jax.eval import EvalItem, evaluate, evaluate_run, load_jobs
from indextts2_jax.eval.asr import (
    SENTENCE_END,
    SENTENCE_START,
    build_backoff_model,
    character_error_rate,
    normalize_for_wer,
    word_error_rate,
    write_arpa,
)

NUM_UTTS = 8
NUM_SPEAKERS = 4  # 2 utterances per voice


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """8 real espeak-ng utterances by 4 demo voices: list of manifest records with absolute paths."""
    root = tmp_path_factory.mktemp("eval") / "corpus"
    manifest = build_demo_corpus(root, num_utterances=NUM_UTTS, num_speakers=NUM_SPEAKERS, seed=0)
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    for r in records:
        r["path"] = str(root / r["audio_path"])
    return records


def _write(path: Path, wave: np.ndarray, sr: int) -> str:
    sf.write(str(path), np.clip(wave, -1, 1).astype(np.float32), sr, subtype="PCM_16")
    return str(path)


def _other_of_same_speaker(records, r):
    return next(o for o in records if o["speaker"] == r["speaker"] and o["id"] != r["id"])


def _of_other_speaker(records, r):
    return next(o for o in records if o["speaker"] != r["speaker"])


# ---------------------------------------------------------------------------------------------
# text side: normalization, error counts, the ARPA model
# ---------------------------------------------------------------------------------------------
def test_normalization_and_error_counts():
    assert normalize_for_wer("Tickets for 3 people, please!") == "tickets for three people please"
    assert normalize_for_wer("It's 11:20 -- don't  wait.") == normalize_for_wer("it's eleven twenty don't wait")
    counts = word_error_rate("the cat sat on the mat", "the cat sat on a mat mat")
    assert (counts.substitutions, counts.deletions, counts.insertions, counts.reference_length) == (1, 0, 1, 6)
    assert counts.rate == pytest.approx(2 / 6)
    assert word_error_rate("a b c d", "").rate == 1.0
    assert word_error_rate("Hello, world.", "hello world").rate == 0.0
    cer = character_error_rate("今天天气很好。", "今天天汽很好")
    assert (cer.substitutions, cer.reference_length) == (1, 6)


@pytest.mark.parametrize("discount", [0.1, 0.5, "ney"])
def test_arpa_model_is_normalized(tmp_path, discount):
    sentences = [s.split() for s in ("the cat sat on the mat", "the dog sat on the log", "a cat and a dog",
                                     "the cat ran", "the cat sat")]
    probs, backoffs = build_backoff_model(sentences, order=3, discount=discount)
    vocab = [g[0] for g in probs[0]]
    assert SENTENCE_END in vocab and SENTENCE_START not in vocab

    def p(context: tuple, w: str) -> float:
        gram = context + (w,)
        if gram in probs[len(gram) - 1]:
            return probs[len(gram) - 1][gram]
        return backoffs[len(context) - 1].get(context, 1.0) * p(context[1:], w)

    contexts = [(), (SENTENCE_START,), ("the",), ("cat",), (SENTENCE_START, "the"), ("the", "cat"), ("on", "the"),
                ("zzz",), ("dog", "cat")]
    for c in contexts:
        assert sum(p(c, w) for w in vocab) == pytest.approx(1.0, abs=1e-9), c
    assert p(("the",), "cat") > p(("the",), "and")  # seen bigram beats an unseen one
    text = write_arpa(sentences, tmp_path / "lm.arpa", discount=discount).read_text()
    assert text.startswith("\\data\\\nngram 1=") and text.rstrip().endswith("\\end\\")
    assert "\\3-grams:" in text and f"-99.000000\t{SENTENCE_START}\t" in text


# ---------------------------------------------------------------------------------------------
# on real espeak-ng audio
# ---------------------------------------------------------------------------------------------
def test_wer_real_audio_far_below_reversed_and_noise(corpus, tmp_path):
    rng = np.random.default_rng(0)
    items = {"real": [], "reversed": [], "noise": [], "other_sentence": []}
    for i, r in enumerate(corpus[:6]):
        wave, sr = sf.read(r["path"], dtype="float32")
        items["real"].append(EvalItem(r["id"], r["path"], r["text"]))
        items["reversed"].append(EvalItem(r["id"], _write(tmp_path / f"rev_{r['id']}.wav", wave[::-1], sr), r["text"]))
        noise = rng.standard_normal(len(wave)).astype(np.float32) * np.sqrt(np.mean(wave**2))
        items["noise"].append(EvalItem(r["id"], _write(tmp_path / f"noise_{r['id']}.wav", noise, sr), r["text"]))
        # real speech of another sentence: the LM of the evaluated texts must not turn it into the reference
        items["other_sentence"].append(EvalItem(r["id"], corpus[(i + 1) % 6]["path"], r["text"]))
    wer = {}
    for kind, its in items.items():
        report = evaluate(its, metrics={"asr"})
        assert report["counts"]["ok"] == len(its)
        wer[kind] = report["corpus"]["corpus_wer"]
        assert report["summary"]["wer"]["n"] == len(its)
    print("corpus WER", wer)
    assert wer["real"] < 0.3, wer  # pocketsphinx on espeak-ng formant voices: ~0.1-0.2 measured
    for kind in ("reversed", "noise", "other_sentence"):  # ~1.0 and above measured
        assert wer[kind] > wer["real"] + 0.5, wer


def test_speaker_similarity_same_voice_above_different_voice(corpus):
    items, kinds = [], []
    for r in corpus:
        for kind, prompt in (("same", _other_of_same_speaker(corpus, r)), ("other", _of_other_speaker(corpus, r))):
            items.append(EvalItem(f"{r['id']}_{kind}", r["path"], r["text"], prompt=prompt["path"]))
            kinds.append(kind)
    report = evaluate(items, metrics={"speaker"})
    sims = np.array([row["sim_resemblyzer"] for row in report["rows"]])
    kinds = np.array(kinds)
    same, other = sims[kinds == "same"], sims[kinds == "other"]
    print(f"same voice {same.mean():.3f} (min {same.min():.3f}), other voice {other.mean():.3f} "
          f"(max {other.max():.3f})")
    assert same.mean() > other.mean() + 0.05
    assert np.mean(same > other) >= 0.9  # per utterance, the own voice's prompt wins


def test_dnsmos_in_range_and_noise_lowers_it(corpus, tmp_path):
    from indextts2_jax.audio import load_audio
    from indextts2_jax.eval.quality import dnsmos

    clean = load_audio(corpus[0]["path"], 16000)
    noisy = clean + np.random.default_rng(1).standard_normal(len(clean)).astype(np.float32) * 0.1
    s_clean, s_noisy = dnsmos(clean), dnsmos(noisy)
    for s in (s_clean, s_noisy):
        assert set(s) == {"dnsmos_ovrl", "dnsmos_sig", "dnsmos_bak", "dnsmos_p808"}
        assert all(1.0 <= v <= 5.0 for v in s.values()), s
    assert s_noisy["dnsmos_bak"] < s_clean["dnsmos_bak"] - 0.5, (s_clean, s_noisy)


def test_reference_metrics_perfect_on_itself_and_degrade_with_noise(corpus):
    from indextts2_jax.audio import load_audio
    from indextts2_jax.eval import quality

    ref = load_audio(corpus[1]["path"], 16000)
    rng = np.random.default_rng(2)
    rms = np.sqrt(np.mean(ref**2))
    scores = []
    for snr_db in (None, 20.0, 5.0):
        out = ref if snr_db is None else ref + rng.standard_normal(len(ref)).astype(np.float32) * rms * 10 ** (
            -snr_db / 20)
        aligned = quality.aligned_features(ref, out)
        f0, vde = quality.f0_rmse(ref, out, aligned=aligned)
        scores.append({"mcd": quality.mel_cepstral_distortion(ref, out, aligned=aligned), "f0": f0, "vde": vde,
                       "pesq": quality.pesq_wb(ref, out), "stoi": quality.stoi(ref, out)})
    perfect, mild, strong = scores
    print(scores)
    assert perfect["mcd"] == pytest.approx(0.0, abs=1e-6) and perfect["f0"] == 0.0 and perfect["vde"] == 0.0
    assert perfect["pesq"] == pytest.approx(quality.PESQ_MAX, abs=1e-3)
    assert perfect["stoi"] == pytest.approx(1.0, abs=1e-6)
    assert 0 < mild["mcd"] < strong["mcd"]
    assert perfect["pesq"] > mild["pesq"] > strong["pesq"]
    assert perfect["stoi"] > mild["stoi"] > strong["stoi"]
    assert strong["f0"] > 0.0 or strong["vde"] > 0.0


def test_campplus_similarity_from_an_official_format_checkpoint(corpus, tmp_path):
    torch = pytest.importorskip("torch")
    from indextts2_jax.audio import load_audio
    from indextts2_jax.convert.tiny_official import campplus_to_torch, random_params
    from indextts2_jax.eval.speaker import CampplusEmbedder, cosine_similarity
    from indextts2_jax.models import campplus

    config = campplus.CAMPPlusConfig(embedding_size=32, growth_rate=8, bn_size=2, init_channels=16)
    variables = random_params(campplus.abstract_variables(config), np.random.default_rng(0))
    path = tmp_path / "campplus_cn_common.bin"
    torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in campplus_to_torch(variables, config).items()}, path)
    embed = CampplusEmbedder(path)  # both calls fall in one 4 s bucket: one compile
    a = load_audio(corpus[0]["path"], 16000)
    e1, e2 = embed(a), embed(a[: len(a) // 2])
    assert e1.shape == (32,) and np.isfinite(e1).all()
    assert cosine_similarity(e1, embed(a)) == pytest.approx(1.0, abs=1e-6)
    assert cosine_similarity(e1, e2) < 1.0


# ---------------------------------------------------------------------------------------------
# the report and the CLI
# ---------------------------------------------------------------------------------------------
def test_report_files_error_rows_and_cli(corpus, tmp_path):
    from experiments.evaluate import run

    jobs = []
    for r in corpus[:2]:
        jobs.append({"id": r["id"], "wav": r["path"], "text": r["text"],
                     "speaker_prompt": _other_of_same_speaker(corpus, r)["path"], "reference": r["path"],
                     "duration_seconds": round(r["duration"] * 1.1, 3)})
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF....WAVEfmt garbage")
    jobs.append({"id": "missing", "wav": str(tmp_path / "nope.wav"), "text": "hello there",
                 "speaker_prompt": corpus[0]["path"]})
    jobs.append({"id": "corrupt", "wav": "corrupt.wav", "text": "hello there"})  # relative to the jobs file
    jobs.append({"id": "no_prompt_file", "wav": corpus[5]["path"], "text": corpus[5]["text"],
                 "speaker_prompt": str(tmp_path / "no_prompt.wav")})
    jobs_path = tmp_path / "jobs.jsonl"
    jobs_path.write_text("".join(json.dumps(j) + "\n" for j in jobs))
    assert [it.id for it in load_jobs(jobs_path)][-3:] == ["missing", "corrupt", "no_prompt_file"]

    out = tmp_path / "report"
    report = evaluate_run(jobs_path, out)
    rows = {r["id"]: r for r in report["rows"]}
    assert rows["missing"]["status"] == "error" and "not found" in rows["missing"]["error"]
    assert rows["corrupt"]["status"] == "error" and "corrupt.wav" in rows["corrupt"]["error"]
    assert rows["no_prompt_file"]["status"] == "partial" and "no_prompt.wav" in rows["no_prompt_file"]["error"]
    assert rows["no_prompt_file"]["wer"] is not None  # the other metrics still ran
    assert report["counts"] == {"ok": 2, "partial": 1, "error": 2}
    ok = [rows[r["id"]] for r in corpus[:2]]
    for row in ok:
        assert row["mcd"] == pytest.approx(0.0, abs=1e-6) and row["stoi"] == pytest.approx(1.0, abs=1e-6)
        assert row["duration_rel_error"] == pytest.approx(1 - 1 / 1.1, abs=2e-3)
        assert 1.0 <= row["dnsmos_ovrl"] <= 5.0 and -1.0 <= row["sim_resemblyzer"] <= 1.0
    s = report["summary"]
    assert s["wer"]["n"] == 3 and s["sim_resemblyzer"]["n"] == 2 and s["mcd"]["n"] == 2
    values = np.array([r["sim_resemblyzer"] for r in ok])
    assert s["sim_resemblyzer"]["mean"] == pytest.approx(values.mean())
    assert s["sim_resemblyzer"]["ci95"] == pytest.approx(1.959964 * values.std(ddof=1) / np.sqrt(2), rel=1e-5)

    saved = json.loads((out / "report.json").read_text())
    assert saved["summary"]["wer"]["n"] == 3 and len(saved["rows"]) == 5
    md = (out / "report.md").read_text()
    assert "| WER ↓ | % | 3 |" in md and "DNSMOS OVRL" in md and "missing" in md and "not found" in md
    pngs = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert {"hist_wer.png", "hist_sim_resemblyzer.png", "hist_dnsmos_ovrl.png", "hist_mcd.png"} <= set(pngs)
    assert sum(p.startswith("worst_wer_") for p in pngs) == 3
    for p in (out / "plots").glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for p in report["plots"]["worst"]["wer"]:
        assert f"plots/{Path(p).name}" in md

    # CLI, --dir form: x.wav + x.txt pairs, one prompt, only cheap metrics.
    wav_dir = tmp_path / "wavs"
    wav_dir.mkdir()
    for r in corpus[:2]:
        (wav_dir / f"{r['id']}.wav").write_bytes(Path(r["path"]).read_bytes())
        (wav_dir / f"{r['id']}.txt").write_text(r["text"])
    code = run(["--dir", str(wav_dir), "--prompt", corpus[0]["path"], "--out", str(tmp_path / "cli"),
                "--metrics", "asr,duration", "--no_plots", "--quiet"])
    assert code == 0
    cli = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert cli["counts"]["ok"] == 2 and math.isfinite(cli["summary"]["wer"]["mean"])


def test_chinese_cer_with_a_configured_recognizer(tmp_path, corpus):
    calls = []

    def fake_recognizer(wave):
        calls.append(len(wave))
        return "今天天汽很好"

    items = [EvalItem("zh", corpus[0]["path"], "今天天气很好。", language="zh"),
             EvalItem("zh_none", corpus[1]["path"], "你好", language="zh")]
    report = evaluate(items, metrics={"asr"}, recognizers={"zh": fake_recognizer})
    assert len(calls) == 2
    assert report["rows"][0]["cer"] == pytest.approx(1 / 6)
    assert report["corpus"]["corpus_cer"] == pytest.approx((1 + 5) / (6 + 2))  # 你好: 1 sub + 4 ins (好 matches)
    plain = evaluate(items[:1], metrics={"asr"})
    assert "no recognizer" in plain["rows"][0]["asr_note"] and "cer" not in plain["summary"]


def make_fake_zh_recognizer(texts):
    """A --recognizer factory for the CLI test: always hears the same sentence."""
    assert texts == ["今天天气很好。"]
    return lambda wave: "今天天汽很好"


def test_cli_recognizer_option(tmp_path, corpus):
    from experiments.evaluate import run

    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"id": "zh", "wav": corpus[0]["path"], "text": "今天天气很好。"}) + "\n")
    assert run(["--jobs", str(jobs), "--out", str(tmp_path / "out"), "--metrics", "asr", "--no_plots", "--quiet",
                "--recognizer", "zh=tests.test_evaluate:make_fake_zh_recognizer"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["rows"][0]["language"] == "zh" and report["rows"][0]["cer"] == pytest.approx(1 / 6)
    assert "| CER ↓ | % | 1 |" in (tmp_path / "out" / "report.md").read_text()


def test_histograms_need_two_values(tmp_path):
    from indextts2_jax.eval.report import plot_histograms

    one = plot_histograms([{"wer": 0.1, "mcd": 5.0}, {"wer": 0.3, "mcd": float("nan")}], tmp_path)
    assert set(one) == {"wer"} and Path(one["wer"]).read_bytes()[:4] == b"\x89PNG"  # mcd has one finite value
