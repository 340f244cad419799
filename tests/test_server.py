"""The HTTP synthesis server (indextts2_jax/infer/server.py, experiments/serve.py) on loopback, tiny random model.

Every request goes through a real socket on 127.0.0.1 (an ephemeral port); greedy decoding with few codes.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import soundfile as sf

from indextts2_jax import errors
from indextts2_jax.infer.server import RequestError, ServerBusyError, SynthesisService
from tests.tiny_model import tiny_tts

GREEDY = dict(do_sample=False, num_beams=1, repetition_penalty=10.0, max_mel_tokens=16)
pytestmark = pytest.mark.filterwarnings("ignore:.*no stop token:RuntimeWarning")
TEXT = "hello world, this is a test. the quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def tts(tmp_path_factory):
    return tiny_tts(tmp_path_factory.mktemp("tiny_official"))


@pytest.fixture(scope="module")
def prompt(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "spk.wav"
    rng = np.random.default_rng(0)
    t = np.arange(int(1.5 * 22050)) / 22050
    wave = 0.2 * np.sin(2 * np.pi * 200 * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.normal(size=t.size)
    sf.write(str(path), wave.astype(np.float32), 22050)
    return str(path)


@pytest.fixture(scope="module")
def server(tts, tmp_path_factory):
    """``experiments.serve.main`` in a thread (the launcher itself), on an ephemeral loopback port."""
    from experiments import serve

    ready, servers = threading.Event(), []
    argv = ["--model", "unused", "--port", "0", "--max_wait_ms", "400", "--batch_size", "4",
            "--prompt_dir", str(tmp_path_factory.mktemp("uploads"))]
    thread = threading.Thread(target=serve.main, args=(argv,), kwargs=dict(tts=tts, ready=ready, servers=servers),
                              daemon=True)
    thread.start()
    assert ready.wait(60)
    srv = servers[0]
    yield f"http://127.0.0.1:{srv.server_address[1]}", srv
    srv.shutdown()
    thread.join(60)
    assert not thread.is_alive()


def _post(url: str, body, raw: bytes | None = None):
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url + "/synthesize", data=data, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def _post_together(url: str, bodies: list) -> list:
    """Post each body from its own thread, all released at once; the responses in order."""
    results = [None] * len(bodies)
    start = threading.Barrier(len(bodies))

    def client(i):
        start.wait()
        results[i] = _post(url, bodies[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def _samples(wav: bytes) -> np.ndarray:
    data, sr = sf.read(io.BytesIO(wav), dtype="int16")
    assert sr == 22050
    return data


def _pcm16(wave: np.ndarray) -> np.ndarray:
    buf = io.BytesIO()
    sf.write(buf, np.clip(wave, -1, 1), 22050, format="WAV", subtype="PCM_16")
    return _samples(buf.getvalue())


def test_health_and_unknown_endpoint(server):
    url, _ = server
    with urllib.request.urlopen(url + "/health", timeout=30) as resp:
        health = json.loads(resp.read())
    assert health["status"] == "ok" and health["sample_rate"] == 22050 and health["model"]
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url + "/nope", timeout=30)
    assert e.value.code == 404


def test_synthesize_equals_library_call(server, tts, prompt):
    url, _ = server
    status, headers, body = _post(url, dict(text="hello world.", speaker_prompt=prompt, seed=1, sampling=GREEDY))
    assert status == 200 and headers["Content-Type"] == "audio/wav"
    wave, _, report = tts.synthesize("hello world.", prompt, seed=1, **GREEDY)
    np.testing.assert_array_equal(_samples(body), _pcm16(wave))
    assert float(headers["X-Audio-Seconds"]) == pytest.approx(report["audio_seconds"], abs=1e-4)
    assert headers["X-Batch-Jobs"] == "1" and headers["X-Segments"] == "1"


def test_concurrent_requests_share_a_batch(server, tts, prompt):
    """Two requests within max_wait_ms run as one device batch; each equals its one-by-one result."""
    url, _ = server
    bodies = [dict(text="hello world.", speaker_prompt=prompt, seed=1, target_tokens=9, sampling=GREEDY),
              dict(text="the quick brown fox.", speaker_prompt=prompt, seed=2, sampling=GREEDY)]
    results = _post_together(url, bodies)
    for body, (status, headers, data) in zip(bodies, results):
        assert status == 200 and headers["X-Batch-Jobs"] == "2"
        job = {k: v for k, v in body.items() if k != "sampling"}
        wave, _, _ = tts.synthesize(job.pop("text"), job.pop("speaker_prompt"), **job, **GREEDY)
        got = _samples(data)
        assert got.shape == _pcm16(wave).shape
        # padded batch shapes round float32 differently (test_synthesize: <= 5e-5); one int16 step is 3e-5
        assert np.max(np.abs(got.astype(np.int32) - _pcm16(wave))) <= 2


def test_bad_request_in_a_batch_fails_alone(server, tmp_path, prompt):
    url, _ = server
    bodies = [dict(text="hello world.", speaker_prompt=prompt, sampling=GREEDY),
              dict(text="hello world.", speaker_prompt=str(tmp_path / "missing.wav"), sampling=GREEDY)]
    results = _post_together(url, bodies)
    assert results[0][0] == 200 and results[0][1]["X-Batch-Jobs"] == "1"
    with urllib.request.urlopen(url + "/stats", timeout=30) as resp:
        assert json.loads(resp.read())["batches_split"] == 1  # they shared a batch, which failed and was split
    assert results[1][0] == 400
    err = json.loads(results[1][2])
    assert err["type"] == "AudioFileNotFoundError" and "missing.wav" in err["error"]


@pytest.mark.parametrize("body,raw,kind", [
    (None, b"{not json", "RequestError"),
    (None, b"[1, 2]", "RequestError"),
    (dict(text="hi.", speaker_prompt="x.wav", voice="a"), None, "RequestError"),  # unknown key
    (dict(text="hi.", speaker_prompt_wav="***"), None, "RequestError"),  # bad base64
    (dict(text="hi.", speaker_prompt="x.wav", sampling=dict(beams=2)), None, "ConfigError"),
    (dict(text="hi.", speaker_prompt="x.wav", stream="yes"), None, "RequestError"),
])
def test_malformed_requests_answer_400(server, body, raw, kind):
    url, _ = server
    status, _, data = _post(url, body, raw)
    assert status == 400 and json.loads(data)["type"] == kind


def test_input_errors_answer_400_and_server_survives(server, prompt, tmp_path):
    url, _ = server
    silent = tmp_path / "silent.wav"
    sf.write(str(silent), np.zeros(22050, np.float32), 22050)
    for body, kind in [(dict(text="   ", speaker_prompt=prompt), "EmptyTextError"),
                       (dict(text="hello.", speaker_prompt=str(silent)), "SilentAudioError"),
                       (dict(text="hello.", speaker_prompt=prompt, stream=True, quick_streaming_tokens=-1),
                        "ConfigError")]:
        status, _, data = _post(url, dict(body, sampling=GREEDY))
        assert status == 400 and json.loads(data)["type"] == kind, data
    status, _, _ = _post(url, dict(text="hello world.", speaker_prompt=prompt, sampling=GREEDY))
    assert status == 200
    with urllib.request.urlopen(url + "/stats", timeout=30) as resp:
        stats = json.loads(resp.read())
    assert stats["errors"] >= 3 and stats["batches"] >= 1 and stats["requests"] >= 4


def test_uploaded_prompt_equals_path_and_hits_the_cache(server, tts, prompt):
    url, _ = server
    audio = base64.b64encode(open(prompt, "rb").read()).decode()
    _, _, by_path = _post(url, dict(text="hello world.", speaker_prompt=prompt, sampling=GREEDY))
    hits = tts.cache_stats["hits"]
    status, _, first = _post(url, dict(text="hello world.", speaker_prompt_wav=audio, sampling=GREEDY))
    assert status == 200
    np.testing.assert_array_equal(_samples(first), _samples(by_path))
    status, _, again = _post(url, dict(text="hello world.", speaker_prompt_wav=audio, sampling=GREEDY))
    assert status == 200 and tts.cache_stats["hits"] > hits  # the stored upload kept its name and mtime
    np.testing.assert_array_equal(_samples(again), _samples(by_path))


def test_stream_response_equals_wav_response(server, tts, prompt):
    """The streamed PCM is synthesize(batch_size=1)'s audio exactly; the WAV response ran the text's segments
    as one device batch (batch_size 4), so it equals it up to float rounding."""
    url, _ = server
    body = dict(text=TEXT, speaker_prompt=prompt, max_text_tokens_per_segment=24, sampling=GREEDY)
    status, headers, wav = _post(url, body)
    assert status == 200 and int(headers["X-Segments"]) >= 2
    status, headers, pcm = _post(url, dict(body, stream=True))
    assert status == 200 and headers["Content-Type"].startswith("audio/L16; rate=22050")
    assert headers.get("Transfer-Encoding") == "chunked"
    streamed = np.frombuffer(pcm, "<i2")
    one_by_one, _, _ = tts.synthesize(TEXT, prompt, max_text_tokens_per_segment=24, **GREEDY)
    np.testing.assert_array_equal(streamed, _pcm16(one_by_one))
    assert streamed.shape == _samples(wav).shape
    assert np.max(np.abs(streamed.astype(np.int32) - _samples(wav))) <= 2
    with urllib.request.urlopen(url + "/stats", timeout=30) as resp:
        assert json.loads(resp.read())["last"]["first_audio_s"] > 0


def test_prompt_root_confines_paths(tts, prompt, tmp_path):
    """In-process use of the service (no HTTP): prompt paths relative to prompt_root, none outside it."""
    import shutil

    shutil.copy(prompt, tmp_path / "spk.wav")
    service = SynthesisService(tts, prompt_root=tmp_path, prompt_dir=tmp_path / "up")
    try:
        wave, sr, report, batch_jobs = service.synthesize(dict(text="hello world.", speaker_prompt="spk.wav",
                                                               sampling=GREEDY), timeout=120)
        np.testing.assert_array_equal(wave, tts.synthesize("hello world.", prompt, **GREEDY)[0])
        assert sr == 22050 and batch_jobs == 1 and report["speaker_prompt"] == str(tmp_path / "spk.wav")
        with pytest.raises(RequestError, match="outside"):
            service.parse(dict(text="hi.", speaker_prompt=prompt))
        with pytest.raises(RequestError, match="outside"):
            service.parse(dict(text="hi.", speaker_prompt="../x.wav"))
        req = service.parse(dict(text="hi.", speaker_prompt="voices/a.wav"))
        assert req.job["speaker_prompt"] == str((tmp_path / "voices" / "a.wav").resolve())
        with pytest.raises(RequestError, match="not both"):
            service.parse(dict(text="hi.", speaker_prompt="a.wav", speaker_prompt_wav="AAAA"))
        assert issubclass(RequestError, errors.IndexTTS2Error)
    finally:
        service.close()


def test_full_queue_refuses(tts, tmp_path):
    """Requests beyond max_queue are refused (the HTTP layer answers 503 with Retry-After) and counted."""
    service = SynthesisService(tts, max_queue=1, prompt_dir=tmp_path)
    service.close()  # no worker: what is queued stays queued
    service.submit(service.parse(dict(text="hi.", speaker_prompt="a.wav")))
    with pytest.raises(ServerBusyError, match="max_queue 1"):
        service.submit(service.parse(dict(text="hi.", speaker_prompt="a.wav")))
    assert service.snapshot()["refused"] == 1
    # over HTTP: 503 with Retry-After
    from indextts2_jax.infer.server import make_server

    server = make_server(service, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        status, headers, data = _post(f"http://127.0.0.1:{server.server_address[1]}",
                                      dict(text="hi.", speaker_prompt="a.wav"))
    finally:
        server.shutdown()
        server.server_close()
    assert status == 503 and headers["Retry-After"] == "1" and json.loads(data)["type"] == "ServerBusyError"


def test_warm_up_with_code_counts_covers_those_lengths(tts, prompt, tmp_path):
    """warm_up(tokens=[n]) compiles the length buckets of n-code outputs: afterwards a request for n codes
    compiles nothing."""
    service = SynthesisService(tts, batch_size=1, max_wait_ms=0, prompt_dir=tmp_path)
    sampling = dict(GREEDY, max_mel_tokens=40)  # free runs reach 40 codes (no stop token): other buckets than 22
    try:
        n = 22
        rows = service.warm_up(prompt, text=TEXT, sampling=sampling, tokens=[n])
        assert [(r["batch"], r["tokens"]) for r in rows] == [(1, None), (1, n)]
        assert rows[1]["new_compiles"] > 0  # n codes met length buckets the free-running sentence had not
        wave, _, report, _ = service.synthesize(dict(text=TEXT, speaker_prompt=prompt, target_tokens=n,
                                                     sampling=sampling))
        assert report["batch"]["new_compiles"] == 0 and [s["codes"] for s in report["segments"]] == [n]
    finally:
        service.close()


def test_warm_up_compiles_every_batch_bucket(tts, prompt, tmp_path):
    """After warm_up, a batch of the same sentence at any size up to batch_size compiles nothing; a bad warm-up
    prompt raises its error and the service keeps serving."""
    service = SynthesisService(tts, batch_size=4, max_wait_ms=400, prompt_dir=tmp_path)
    try:
        rows = service.warm_up(prompt, text=TEXT, sampling=GREEDY)
        assert [r["batch"] for r in rows] == [1, 2, 4]
        results = [None] * 3

        def client(i):
            results[i] = service.synthesize(dict(text=TEXT, speaker_prompt=prompt, sampling=GREEDY))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for wave, _, report, batch_jobs in results:
            assert batch_jobs == 3 and report["batch"]["new_compiles"] == 0 and np.isfinite(wave).all()
        with pytest.raises(errors.AudioFileNotFoundError):
            service.warm_up(tmp_path / "missing.wav", text=TEXT, sampling=GREEDY)
        wave, _, _, _ = service.synthesize(dict(text="hello world.", speaker_prompt=prompt, sampling=GREEDY))
        assert wave.size > 0
    finally:
        service.close()
    with pytest.raises(RuntimeError, match="closed"):  # not a wait forever
        service.warm_up(prompt, text=TEXT, sampling=GREEDY)


def test_serve_cli_warmup_error_ends_the_launcher(tts, tmp_path):
    """``--warmup`` with an unreadable prompt stops the launcher with that error before it listens."""
    from experiments import serve

    ready = threading.Event()
    with pytest.raises(errors.AudioFileNotFoundError):
        serve.main(["--model", "unused", "--port", "0", "--prompt_dir", str(tmp_path), "--warmup",
                    str(tmp_path / "missing.wav")], tts=tts, ready=ready)
    assert not ready.is_set()
