"""Serving throughput: the HTTP server on loopback under concurrent clients, batched against one by one.

    python -m benchmarks.serve --model runs/demo/bundle --prompt runs/demo/corpus/wavs/x.wav   # a trained bundle
    python -m benchmarks.serve --model random:tiny                                            # smoke run

For each ``--batch_size`` (default ``1,8``) a fresh server (``experiments.serve``'s service on an ephemeral
127.0.0.1 port) takes ``--clients`` concurrent clients, each posting ``--requests`` texts (``TEXTS`` in turn,
``--sampling`` decoding, default greedy) with one speaker prompt, ``--rounds`` times (a row each). One warm-up
request per text and one full batch run first, but batches of other sizes and lengths compile when they first
occur (the ``compiles`` column), so the later rounds are the steady state. Columns: requests per second,
seconds of audio per second, latency p50 / p95 (seconds, client side), the mean device batch (``/stats``), the
compiles during the round and the server's errors. Traffic stays on loopback.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "Every morning we walk to the river to watch the boats go by.",
    "She sells sea shells by the sea shore.",
    "How much wood would a woodchuck chuck if a woodchuck could chuck wood?",
)


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/synthesize", data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=3600) as resp:
        resp.read()
        return resp.status, dict(resp.headers)


def _prompt_file(d: Path) -> str:
    import soundfile as sf

    t = np.arange(int(3.0 * 22050)) / 22050
    wave = 0.2 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 2.5 * t))
    sf.write(str(d / "prompt.wav"), wave.astype(np.float32), 22050)
    return str(d / "prompt.wav")


def run_one(tts, batch_size: int, clients: int, requests: int, prompt: str, sampling: dict,
            max_wait_ms: float, rounds: int) -> list[dict]:
    from indextts2_jax.infer.server import SynthesisService, make_server

    with tempfile.TemporaryDirectory() as d:
        service = SynthesisService(tts, batch_size=batch_size, max_wait_ms=max_wait_ms, prompt_dir=d)
        server = make_server(service, "127.0.0.1", 0)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        try:
            def body(i):
                return dict(text=TEXTS[i % len(TEXTS)], speaker_prompt=prompt, seed=i, sampling=sampling)

            warm = [threading.Thread(target=_post, args=(url, body(i))) for i in range(min(clients, batch_size))]
            for i in range(len(TEXTS)):  # one by one: each text alone
                _post(url, body(i))
            for t in warm:  # a full batch: the batched shapes
                t.start()
            for t in warm:
                t.join()
            rows = [_timed_round(url, tts, body, clients, requests) for _ in range(rounds)]
        finally:
            server.shutdown()
            server.server_close()
            service.close()
    for i, row in enumerate(rows):
        row.update(batch_size=batch_size, round=i + 1)
    return rows


def _timed_round(url: str, tts, body, clients: int, requests: int) -> dict:
    before = json.loads(urllib.request.urlopen(url + "/stats").read())
    compiles_before = sum(tts.trace_counts.values())
    latencies, audio = [], []
    lock = threading.Lock()

    def client(c):
        for r in range(requests):
            t0 = time.perf_counter()
            _, headers = _post(url, body(c * requests + r))
            with lock:
                latencies.append(time.perf_counter() - t0)
                audio.append(float(headers["X-Audio-Seconds"]))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = json.loads(urllib.request.urlopen(url + "/stats").read())
    batches = after["batches"] - before["batches"]
    n = len(latencies)
    lat = sorted(latencies)
    return {"batch_size": 0, "round": 0, "clients": clients, "requests": n, "wall s": wall, "req/s": n / wall,
            "audio s/s": sum(audio) / wall, "p50 s": statistics.median(lat), "p95 s": lat[min(n - 1, int(0.95 * n))],
            "mean batch": (after["batched_requests"] - before["batched_requests"]) / max(batches, 1),
            "compiles": sum(tts.trace_counts.values()) - compiles_before, "errors": after["errors"] - before["errors"]}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="random:tiny", help="as experiments.synthesize --model")
    p.add_argument("--prompt", help="speaker prompt (default: a synthetic 3 s tone)")
    p.add_argument("--batch_size", default="1,8", help="comma-separated server batch sizes")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=4, help="requests per client")
    p.add_argument("--max_wait_ms", type=float, default=25.0)
    p.add_argument("--rounds", type=int, default=3, help="timed rounds per batch size (a row each)")
    p.add_argument("--sampling", default='{"do_sample": false, "num_beams": 1}', help="JSON decoding options")
    p.add_argument("--diffusion_steps", type=int, default=None)
    args = p.parse_args(argv)

    from benchmarks.common import print_table
    from experiments.synthesize import load_model

    tts = load_model(args.model, "float32", diffusion_steps=args.diffusion_steps)
    sampling = json.loads(args.sampling)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        prompt = args.prompt or _prompt_file(Path(d))
        for b in [int(x) for x in args.batch_size.split(",") if x]:
            rows += run_one(tts, b, args.clients, args.requests, prompt, sampling, args.max_wait_ms, args.rounds)
    import jax

    print(f"# {tts.assets.source}, {jax.devices()[0].device_kind}, {args.clients} clients x {args.requests} "
          f"requests, sampling {sampling}, {tts.diffusion_steps} CFM steps, max_wait {args.max_wait_ms} ms")
    print_table(rows)
    return rows


if __name__ == "__main__":
    main()
