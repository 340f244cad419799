"""Grain pipelines over preprocessed shards: determinism, resumption, host sharding, buckets, stages."""

import numpy as np
import pytest

from configs import demo
from data_pipeline import pipeline as dp
from data_pipeline import preprocess as pp
from data_pipeline import shards as shard_io
from data_pipeline.manifest import Utterance, read_manifest, write_manifest
from tests.test_preprocess import make_corpus

BUCKETS = (32, 64, 128)  # mel_stacked frames (~43 Hz): the corpus spans 0.6-2.6 s = 26-112 frames


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """4 speakers x 8 utterances plus one 3.5 s utterance (150 frames, longer than the largest bucket)."""
    import soundfile as sf

    from indextts2_jax.text.tokenizer import train_bpe

    root = tmp_path_factory.mktemp("pipe")
    manifest = make_corpus(root, num_speakers=4, per_speaker=8, bad=False, seed=1)
    utts = read_manifest(manifest)
    t = np.arange(int(3.5 * 22050)) / 22050
    sf.write(str(root / "wavs" / "long.wav"), (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 22050)
    utts.append(Utterance("zz_long", str(root / "wavs" / "long.wav"), "a long one", "spk0", "en", 3.5, 22050))
    write_manifest(manifest, utts)
    bpe = train_bpe([u.text for u in utts] * 10, 48, root / "bpe")
    opts = pp.PreprocessOptions(features=("text_ids", "mel", "mel_stacked", "wave"), bpe_model=str(bpe))
    report = pp.preprocess(utts, root / "shards", opts, num_shards=3, valid_fraction=0.0, progress=False)
    assert report["total"]["examples"] == 33
    plain = pp.PreprocessOptions(features=("mel_stacked",))  # no text_ids: the pipeline tokenizes
    pp.preprocess(utts[:8], root / "notext", plain, num_shards=1, valid_fraction=0.0, progress=False)
    return {"root": root, "shards": root / "shards", "bpe": str(bpe), "notext": root / "notext"}


def make(data, stage="gpt", **kw):
    kw.setdefault("shards_dir", data["shards"])
    kw.setdefault("length_buckets", BUCKETS)
    kw.setdefault("global_batch_size", 4)
    kw.setdefault("num_workers", 0)
    kw.setdefault("process_index", 0)
    kw.setdefault("process_count", 1)
    return dp.make_pipeline(demo.get_config(f"stage={stage}"), **kw)


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_same_seed_same_batches(data):
    p = make(data, num_epochs=1)
    a, b = list(p), list(make(data, num_epochs=1))
    assert len(a) == p.plan.batches_per_epoch == sum(-(-c // 4) for c in np.bincount(
        p.plan.bucket_of[p.plan.kept]))
    assert_batches_equal(a, b)
    other = list(make(data, num_epochs=1, seed=5))
    assert [x["record_index"].tolist() for x in other] != [x["record_index"].tolist() for x in a]
    # Each epoch is reshuffled, and covers every kept record once.
    two = list(make(data, num_epochs=2))
    first, second = two[: len(a)], two[len(a):]
    assert [x["record_index"].tolist() for x in first] != [x["record_index"].tolist() for x in second]
    for epoch in (first, second):
        seen = np.concatenate([x["record_index"][x["valid"]] for x in epoch])
        assert sorted(seen.tolist()) == sorted(p.plan.kept.tolist())
    # shuffle=False (evaluation): records in shard order within each bucket, buckets in order.
    ordered = list(make(data, num_epochs=1, shuffle=False))
    sizes = [x["semantic_features"].shape[1] for x in ordered]
    assert sizes == sorted(sizes)
    rows = [x["record_index"][x["valid"]] for x in ordered]
    for size in set(sizes):
        r = np.concatenate([rw for rw, s in zip(rows, sizes) if s == size])
        assert (np.diff(r) > 0).all()


def test_buckets_shapes_and_dropped(data):
    cfg = demo.get_config("stage=gpt")
    p = make(data, num_epochs=1)
    assert p.dropped == {"longer_than_largest_bucket": 1}
    assert p.plan.num_records == 33 and len(p.plan.kept) == 32
    shapes = p.batch_shapes()
    for b, size in enumerate(BUCKETS):
        assert shapes[b]["semantic_features"] == (4, size, 160)
        assert shapes[b]["text_ids"] == (4, cfg.data.max_text_tokens)
        # prompts: config.data.prompt_frames when set, else the smallest bucket
        assert shapes[b]["prompt_features"] == (4, int(cfg.data.get("prompt_frames", BUCKETS[0])), 160)
    index = shard_io.load_index(shard_io.list_shards(data["shards"], "train"))
    for batch in p:
        size = batch["semantic_features"].shape[1]
        assert size in BUCKETS
        assert {k: v.shape for k, v in batch.items()} == shapes[BUCKETS.index(size)]
        lengths = batch["semantic_lengths"][batch["valid"]]
        assert lengths.max() <= size and (BUCKETS.index(size) == 0 or lengths.min() > BUCKETS[BUCKETS.index(size) - 1])
        for row in np.nonzero(batch["valid"])[0]:
            e = index[batch["record_index"][row]]
            assert batch["semantic_lengths"][row] == e["lengths"]["mel_stacked"]
            assert batch["text_lengths"][row] == e["lengths"]["text_ids"] > 0
            assert not batch["semantic_features"][row, batch["semantic_lengths"][row]:].any()  # zero padding
        assert not batch["semantic_features"][~batch["valid"]].any()


def test_gpt_prompt_from_same_speaker(data):
    paths = shard_io.list_shards(data["shards"], "train")
    records = [r for path in paths for r in shard_io.read_shard(path)]
    for source in ("other", "same"):
        p = make(data, num_epochs=1, prompt_source=source, prompt_frames=24, prompt_min_frames=8)
        for batch in p:
            for row in np.nonzero(batch["valid"])[0]:
                i = int(batch["record_index"][row])
                n = int(batch["prompt_lengths"][row])
                assert 8 <= n <= 24
                prompt = batch["prompt_features"][row, :n]
                candidates = [j for j, r in enumerate(records) if r["speaker"] == records[i]["speaker"]]
                hits = [j for j in candidates if _contains(records[j]["mel_stacked"], prompt)]
                assert hits, "prompt is not a crop of a same-speaker utterance"
                if source == "same":
                    assert i in hits
                else:
                    assert any(j != i for j in hits)
                ids = records[i]["text_ids"]
                np.testing.assert_array_equal(batch["text_ids"][row, : len(ids)], ids)


def _contains(features, segment):
    n = segment.shape[0]
    return any(np.array_equal(features[s:s + n], segment) for s in range(features.shape[0] - n + 1))


def test_two_hosts_disjoint_and_complete(data):
    full = list(make(data, num_epochs=1))
    hosts = [list(make(data, num_epochs=1, process_index=i, process_count=2)) for i in range(2)]
    assert len(hosts[0]) == len(hosts[1]) == len(full)
    seen = []
    for step, (a, b) in enumerate(zip(*hosts)):
        assert a["semantic_features"].shape == b["semantic_features"].shape  # same bucket on every host
        assert a["text_ids"].shape[0] == 2
        ra, rb = a["record_index"][a["valid"]], b["record_index"][b["valid"]]
        assert not set(ra) & set(rb)
        seen += list(ra) + list(rb)
        # Together the hosts read exactly the single-host global batch.
        both = np.concatenate([a["record_index"], b["record_index"]])
        np.testing.assert_array_equal(both, full[step]["record_index"])
        np.testing.assert_array_equal(np.concatenate([a["prompt_features"], b["prompt_features"]]),
                                      full[step]["prompt_features"])
    assert sorted(seen) == sorted(make(data).plan.kept.tolist())
    with pytest.raises(ValueError, match="not divisible"):
        make(data, process_index=0, process_count=3)


def test_restore_mid_epoch_continues_exactly(data, tmp_path):
    p = make(data, num_epochs=2)
    reference = list(p)
    assert len(reference) > 12
    it = iter(make(data, num_epochs=2))
    head = take(it, 5)
    state = it.get_state()
    dp.save_iterator_state(it, tmp_path / "data")  # grain.checkpoint.CheckpointHandler's file layout
    assert (tmp_path / "data" / "process_0-of-1.json").exists()
    take(it, 3)  # the original iterator moves on; restoring must not depend on it
    resumed = iter(make(data, num_epochs=2))
    resumed.set_state(state)
    assert_batches_equal(head + list(resumed), reference)
    from_file = dp.restore_iterator_state(iter(make(data, num_epochs=2)), tmp_path / "data")
    assert_batches_equal(head + list(from_file), reference)


def test_worker_processes_same_batches_and_resume(data):
    reference = list(make(data, num_epochs=1))
    it = iter(make(data, num_epochs=1, num_workers=2))
    head = take(it, 3)
    state = it.get_state()
    rest = list(it)
    assert_batches_equal(head + rest, reference)
    resumed = iter(make(data, num_epochs=1, num_workers=2))
    resumed.set_state(state)
    assert_batches_equal(head + list(resumed), reference)


def test_tokenizes_when_shards_hold_no_text_ids(data):
    from indextts2_jax.text.tokenizer import TextTokenizer

    with pytest.raises(FileNotFoundError, match="no text_ids"):
        make(data, shards_dir=data["notext"])
    p = make(data, shards_dir=data["notext"], bpe_model=data["bpe"], num_epochs=1)
    records = list(shard_io.read_shard(shard_io.list_shards(data["notext"], "train")[0]))
    tok = TextTokenizer(data["bpe"])
    for batch in p:
        for row in np.nonzero(batch["valid"])[0]:
            ids = tok.encode(records[batch["record_index"][row]]["text"])
            assert batch["text_lengths"][row] == len(ids)
            np.testing.assert_array_equal(batch["text_ids"][row, : len(ids)], ids)


def test_s2mel_and_vocoder_crop_aligned(data):
    p = make(data, stage="s2mel", num_epochs=1)
    assert p.dropped == {} and len(p.plan.kept) == 33  # the long one is cropped, not dropped
    cropped = 0
    for batch in p:
        L = batch["semantic_features"].shape[1]
        assert batch["mel"].shape == (4, 2 * L, 80)
        for row in np.nonzero(batch["valid"])[0]:
            n = batch["semantic_lengths"][row]
            assert batch["mel_lengths"][row] == 2 * n
            mel = batch["mel"][row, : 2 * n]
            np.testing.assert_array_equal(batch["semantic_features"][row, :n], mel.reshape(n, 160))
            cropped += n == 128 and batch["duration"][row] > 3
    assert cropped == 1
    c = make(data, stage="codec", num_epochs=1)
    assert c.dropped == {} and set(c.batch_shapes()[0]) == {"valid", "record_index", "speaker_index", "duration",
                                                            "semantic_features", "semantic_lengths"}
    v = make(data, stage="vocoder", num_epochs=1, length_buckets=(16,))
    for batch in v:
        assert batch["mel"].shape == (4, 16, 80) and batch["wave"].shape == (4, 16 * 256)
        assert (batch["wave_lengths"][batch["valid"]] == 16 * 256).all()
        assert np.abs(batch["wave"]).max() <= 1.0


def test_orbax_checkpoint_manager_with_grain_handler(data, tmp_path):
    """The Orbax usage documented in data_pipeline/pipeline.py: iterator state as a second item."""
    import grain
    import orbax.checkpoint as ocp

    reference = list(make(data, num_epochs=1))
    it = iter(make(data, num_epochs=1))
    head = take(it, 4)
    train_state = {"w": np.arange(3.0)}
    mngr = ocp.CheckpointManager(tmp_path / "ckpt", item_handlers={
        "state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()})
    mngr.save(4, args=ocp.args.Composite(state=ocp.args.StandardSave(train_state),
                                         data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    assert (tmp_path / "ckpt" / "4" / "data" / "process_0-of-1.json").exists()
    restored = mngr.restore(4, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(train_state), data=grain.checkpoint.CheckpointRestore(iter(make(data,
                                                                                                   num_epochs=1)))))
    np.testing.assert_array_equal(restored["state"]["w"], train_state["w"])
    assert_batches_equal(head + list(restored["data"]), reference)
    mngr.close()


def test_s2mel_real_features_crop_the_same_time_window(tmp_path):
    """Real shards: 50 Hz w2v-BERT features/codes and 22050/256 Hz mel. The s2mel crop takes the same time
    window from both (ratio 1.7227 from the shard/config rates, not the demo's 2), codes follow the features,
    and the style input is the shards' speaker_embedding."""
    from configs import indextts2

    sem_rate, mel_rate = 50.0, 22050 / 256
    records, index = [], []
    for i, seconds in enumerate((1.0, 2.3, 3.7, 5.1, 0.7, 4.4)):
        n_sem, n_mel = int(seconds * sem_rate), int(seconds * mel_rate)
        # every frame holds its own centre time (s), so the test can read where a crop starts and ends
        sem = np.repeat(((np.arange(n_sem) + 0.5) / sem_rate)[:, None], 4, 1).astype(np.float32)
        mel = np.repeat(((np.arange(n_mel) + 0.5) / mel_rate)[:, None], 80, 1).astype(np.float32)
        records.append({"id": f"u{i}", "speaker": f"s{i % 2}", "speaker_index": i % 2, "text": "x", "language": "en",
                        "emotion": None, "duration": seconds, "sample_rate": 22050, "num_samples": n_mel * 256,
                        "semantic_features": sem, "semantic_codes": np.arange(n_sem, dtype=np.int32), "mel": mel,
                        "speaker_embedding": np.full(192, i, np.float32)})
        index.append({"id": f"u{i}", "speaker": f"s{i % 2}", "speaker_index": i % 2, "duration": seconds,
                      "lengths": {"semantic_features": n_sem, "semantic_codes": n_sem, "mel": n_mel}})
    path = tmp_path / shard_io.shard_name("train", 0, 1)
    with shard_io.ShardWriter(path) as w:
        for r in records:
            w.write(r)
    shard_io.write_done(path, {"num_records": len(index), "examples": index, "skipped": []})
    outputs = {"semantic_features": "", "semantic_codes": "", "mel": "", "speaker_embedding": ""}
    (tmp_path / "dataset.json").write_text(__import__("json").dumps({"outputs": outputs}))
    config = indextts2.get_config("stage=s2mel")
    assert dp.mel_frames_per_semantic_frame(config, "semantic_features") == pytest.approx(mel_rate / sem_rate)
    assert dp.mel_frames_per_semantic_frame(config, "mel_stacked") == 2
    p = dp.make_pipeline(config, shards_dir=tmp_path, length_buckets=(64, 128), global_batch_size=2, num_epochs=3,
                         num_workers=0, process_index=0, process_count=1)
    assert p.dropped == {} and len(p.plan.kept) == 6
    cropped = 0
    for batch in p:
        L = batch["semantic_features"].shape[1]
        assert batch["mel"].shape == (2, int(np.ceil(L * mel_rate / sem_rate)), 80)
        assert batch["semantic_codes"].shape == (2, L) and batch["speaker_embedding"].shape == (2, 192)
        for row in np.nonzero(batch["valid"])[0]:
            n, m = batch["semantic_lengths"][row], batch["mel_lengths"][row]
            assert abs(m - n * mel_rate / sem_rate) <= 1, (n, m)
            sem_t = batch["semantic_features"][row, :n, 0]
            mel_t = batch["mel"][row, :m, 0]
            # the same window: starts and ends agree within a mel frame (a semantic frame is 1.72 mel frames)
            assert abs((sem_t[0] - 0.5 / sem_rate) - (mel_t[0] - 0.5 / mel_rate)) <= 0.5 / mel_rate + 1e-6
            assert abs((sem_t[-1] + 0.5 / sem_rate) - (mel_t[-1] + 0.5 / mel_rate)) <= 1.0 / mel_rate + 1e-6
            first = int(round(sem_t[0] * sem_rate - 0.5))
            np.testing.assert_array_equal(batch["semantic_codes"][row, :n], np.arange(first, first + n))
            assert (batch["speaker_embedding"][row] == batch["record_index"][row]).all()
            cropped += n == 128 and first > 0
    assert cropped > 0  # long records were cropped away from their start
