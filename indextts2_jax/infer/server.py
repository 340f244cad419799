"""An HTTP synthesis server: one model kept warm, concurrent requests batched together on the device.

    python -m experiments.serve --model bundle/ [--host 127.0.0.1 --port 8000 --batch_size 8 --max_wait_ms 25]

Endpoints (JSON in, JSON errors out; the standard library's ``ThreadingHTTPServer``, no web framework):

``POST /synthesize``: a body with the job keys of :meth:`IndexTTS2.synthesize_batch` (``text``,
``speaker_prompt``, ``emotion_prompt``, ``emotion_vector``, ``emotion_alpha``, ``use_emotion_text`` /
``emotion_text``, ``target_tokens`` |
``duration_seconds``, ``seed``, ``max_text_tokens_per_segment``, ``interval_silence_ms``,
``quick_streaming_tokens``, ``codes``), plus

- ``speaker_prompt_wav`` / ``emotion_prompt_wav``: the prompt audio itself, base64 (any format soundfile
  reads), instead of a path on the server. Uploads are stored once under their content hash, so a voice
  sent again hits the prompt-feature cache;
- ``sampling``: decoding options (``num_beams``, ``do_sample``, ``top_k``, ``top_p``, ``temperature``,
  ``repetition_penalty``, ``length_penalty``, ``max_mel_tokens``; infer_v2's defaults);
- ``stream``: true for the audio segment by segment as each is ready (``synthesize_stream``).

It answers ``audio/wav`` (16-bit PCM) with ``X-Audio-Seconds``, ``X-RTF``, ``X-Batch-Jobs`` (requests that
shared the device batch) and ``X-Segments`` headers; with ``stream``, ``audio/L16; rate=22050; channels=1``
(raw little-endian 16-bit PCM) in HTTP/1.1 chunks, one per text segment (the inter-segment silence included);
the stream's time to first audio shows as ``last.first_audio_s`` in ``GET /stats``. Bad input (an
:class:`IndexTTS2Error`: empty text, missing or corrupt prompt audio, an unknown key, a bad option) answers 400
with ``{"error", "type"}`` and costs no other request anything; more than ``max_queue`` waiting requests
answer 503 with ``Retry-After``; anything else 500.

``GET /health``: ``{"status": "ok", "model", "sample_rate"}``. ``GET /stats``: requests, batches, errors,
streams, batches split (re-run one by one after bad input), the mean batch size, the last batch's report and,
when one is in use, the persistent compilation cache's counters.

Warm-up (:meth:`SynthesisService.warm_up`, ``experiments.serve --warmup PROMPT``): before listening, one sentence
at every device batch bucket up to ``batch_size`` (1, 2, 4, 8), so the first burst of concurrent clients does not
wait for the batched programs to compile.

Batching: a worker thread owns the model (every JAX call happens there). It takes the oldest request, then
waits up to ``max_wait_ms`` for more requests with the same sampling options, up to ``batch_size`` of them,
and runs them as one :meth:`IndexTTS2.synthesize_batch` (greedy results equal one-by-one synthesis; sampled
results depend on each job's seed, not on its batch mates, up to float rounding). When a batch fails on bad
input, each of its requests runs alone, so only the bad one gets the error. A streaming request runs alone.

Prompt paths: by default any path the server process can read; ``prompt_root`` confines them to one folder
(paths outside it answer 400). The default host is loopback.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import http.server
import io
import json
import os
import queue
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indextts2_jax import compile_cache
from indextts2_jax.errors import ConfigError, IndexTTS2Error

REQUEST_KEYS = ("speaker_prompt_wav", "emotion_prompt_wav", "sampling", "stream")
MAX_BODY_BYTES = 64 << 20


class RequestError(ConfigError):
    """A malformed request (not JSON, unknown key, bad base64, a prompt outside ``prompt_root``)."""


class ServerBusyError(IndexTTS2Error):
    """``max_queue`` requests already wait: the request is refused (HTTP 503 with ``Retry-After``)."""


@dataclasses.dataclass
class _Request:
    job: dict
    sampling: dict
    stream: bool
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None
    batch_jobs: int = 0
    chunks: queue.Queue | None = None  # stream: StreamChunk, then None; or an exception
    cancelled: bool = False

    @property
    def sampling_key(self) -> str:
        return json.dumps(self.sampling, sort_keys=True)


WARMUP_TEXT = "Hello, this is a warm-up sentence."


class _Task:
    """Work for the worker thread (which owns the model) that is not a request: ``fn()``, then ``done``."""

    def __init__(self, fn):
        self.fn, self.error, self.done = fn, None, threading.Event()

    def run(self) -> None:
        try:
            self.fn()
        except BaseException as e:  # noqa: BLE001 - handed to the waiting caller
            self.error = e
        self.done.set()


class SynthesisService:
    """Queues synthesis requests and runs them on one :class:`IndexTTS2` from one worker thread.

    Args:
      tts: the synthesizer (its jitted stages compile on first use of each shape bucket).
      batch_size: most requests per device batch (segments of the batched jobs run ``batch_size`` at a time).
      max_wait_ms: how long the oldest request waits for batch mates.
      prompt_dir: where uploaded prompts are stored (default: a new temporary folder).
      prompt_root: if given, prompt paths must lie inside this folder.
      max_queue: most requests waiting for the worker; more are refused with :class:`ServerBusyError`.
    """

    def __init__(self, tts, *, batch_size: int = 8, max_wait_ms: float = 25.0, prompt_dir=None, prompt_root=None,
                 max_queue: int = 256):
        from indextts2_jax.infer.pipeline import JOB_KEYS

        self.tts = tts
        self.batch_size = max(int(batch_size), 1)
        self.max_wait = max(float(max_wait_ms), 0.0) / 1000.0
        self.prompt_dir = Path(prompt_dir) if prompt_dir else Path(tempfile.mkdtemp(prefix="indextts2_prompts_"))
        self.prompt_dir.mkdir(parents=True, exist_ok=True)
        self.prompt_root = Path(prompt_root).resolve() if prompt_root else None
        self.max_queue = int(max_queue)
        self.job_keys = frozenset(JOB_KEYS) - {"out", "id"}
        self.queue: queue.Queue[_Request | _Task | None] = queue.Queue()
        self.stats = {"requests": 0, "batches": 0, "batched_requests": 0, "errors": 0, "streams": 0,
                      "batches_split": 0, "refused": 0}
        self.last_report: dict = {}
        self._lock = threading.Lock()
        self._worker = threading.Thread(target=self._run, name="indextts2-synthesis", daemon=True)
        self._worker.start()

    # -- requests ----------------------------------------------------------------------------
    def parse(self, body: dict) -> _Request:
        """A request body (decoded JSON) to a queued-request record; raises :class:`RequestError`."""
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        unknown = set(body) - self.job_keys - set(REQUEST_KEYS)
        if unknown:
            raise RequestError(f"unknown request keys {sorted(unknown)}; known: "
                               f"{sorted(self.job_keys | set(REQUEST_KEYS))}")
        job = {k: v for k, v in body.items() if k in self.job_keys}
        for kind in ("speaker_prompt", "emotion_prompt"):
            upload = body.get(f"{kind}_wav")
            if upload is not None:
                if job.get(kind) is not None:
                    raise RequestError(f"give {kind} (a path) or {kind}_wav (the audio), not both")
                job[kind] = self._store_upload(upload, kind)
            elif job.get(kind) is not None:
                job[kind] = self._check_path(job[kind], kind)
        sampling = body.get("sampling") or {}
        if not isinstance(sampling, dict):
            raise RequestError("sampling must be a JSON object of decoding options")
        self.tts._decode_config(sampling)  # unknown options raise ConfigError here, in the request's thread
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise RequestError(f"stream must be true or false, got {stream!r}")
        return _Request(job=job, sampling=sampling, stream=stream, chunks=queue.Queue() if stream else None)

    def _store_upload(self, data, kind: str) -> str:
        if not isinstance(data, str):
            raise RequestError(f"{kind}_wav must be a base64 string")
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as e:
            raise RequestError(f"{kind}_wav is not valid base64: {e}") from e
        if not raw:
            raise RequestError(f"{kind}_wav is empty")
        path = self.prompt_dir / f"{hashlib.sha256(raw).hexdigest()[:32]}.audio"
        if not path.exists():  # same content, same file (and mtime): the prompt cache hits
            tmp = path.with_suffix(f".tmp{threading.get_ident()}")
            tmp.write_bytes(raw)
            os.replace(tmp, path)
        return str(path)

    def _check_path(self, value, kind: str) -> str:
        if not isinstance(value, str):
            raise RequestError(f"{kind} must be a path (string) on the server")
        if self.prompt_root is not None:
            resolved = Path(value if os.path.isabs(value) else self.prompt_root / value).resolve()
            if not resolved.is_relative_to(self.prompt_root):
                raise RequestError(f"{kind} {value!r} lies outside the server's prompt folder")
            return str(resolved)
        return value

    def submit(self, request: _Request) -> _Request:
        with self._lock:
            self.stats["requests"] += 1
            if self.queue.qsize() >= self.max_queue:
                self.stats["refused"] += 1
                raise ServerBusyError(f"{self.queue.qsize()} requests are waiting (max_queue {self.max_queue}); "
                                      "retry later")
        self.queue.put(request)
        return request

    def synthesize(self, body: dict, timeout: float | None = None) -> tuple[np.ndarray, int, dict, int]:
        """Parse, queue and wait: ``(wave, sample_rate, report, batch_jobs)``; raises the request's error."""
        req = self.parse(body)
        if req.stream:
            raise RequestError("synthesize() answers whole requests; submit a streaming one and read stream()")
        self.submit(req)
        if not req.done.wait(timeout):
            raise TimeoutError(f"no result within {timeout} s")
        if req.error is not None:
            raise req.error
        wave, sr, report = req.result
        return wave, sr, report, req.batch_jobs

    def stream(self, req: _Request) -> Iterator:
        """The :class:`StreamChunk` objects of a submitted streaming request (its first error raises)."""
        while True:
            item = req.chunks.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def warm_up(self, speaker_prompt, text: str = WARMUP_TEXT, sampling: dict | None = None,
                tokens: Sequence[int] = ()) -> list[dict]:
        """Compile the programs that requests like ``text`` will meet at every device batch size: one
        :meth:`IndexTTS2.synthesize_batch` of 1, 2, 4, ... copies of the job (each batch bucket up to
        ``batch_size``), run on the worker thread; with ``tokens``, also one such batch per code count in it
        (``target_tokens``: the code, latent, S2M and vocoder length buckets of outputs that long; e.g. the
        lengths the service expects, ~50 codes per second). Returns one row per batch: ``{"batch", "tokens"
        (None: the free-running sentence), "seconds", "new_compiles"}``. Other lengths still meet their own
        buckets on first use (a persistent compilation cache, ``--compilation_cache``, keeps those across
        restarts). Raises the warm-up's own error (e.g. an unreadable prompt)."""
        from indextts2_jax.infer.pipeline import batch_bucket

        sizes = sorted({min(1 << i, self.batch_size) for i in range(batch_bucket(self.batch_size).bit_length())})
        job = {"text": text, "speaker_prompt": str(speaker_prompt)}
        rows: list[dict] = []

        def run() -> None:
            for n in (None, *tokens):
                for b in sizes:
                    t = time.perf_counter()
                    jobs = [dict(job) if n is None else dict(job, target_tokens=int(n)) for _ in range(b)]
                    report = self.tts.synthesize_batch(jobs, batch_size=self.batch_size,
                                                       **(sampling or {}))[-1][2]["batch"]
                    rows.append({"batch": b, "tokens": n, "seconds": round(time.perf_counter() - t, 3),
                                 "new_compiles": report.get("new_compiles")})

        if not self._worker.is_alive():
            raise RuntimeError("the service is closed: warm_up needs its worker thread")
        task = _Task(run)
        self.queue.put(task)
        task.done.wait()
        if task.error is not None:
            raise task.error
        return rows

    def close(self) -> None:
        self.queue.put(None)
        self._worker.join(timeout=60)

    # -- the worker --------------------------------------------------------------------------
    def _run(self) -> None:
        pending: list[_Request] = []
        while True:
            first = pending.pop(0) if pending else self.queue.get()
            if first is None:
                return
            if isinstance(first, _Task):
                first.run()
                continue
            if first.stream:
                self._run_stream(first)
                continue
            batch, key = [first], first.sampling_key
            deadline = time.monotonic() + self.max_wait
            # batch mates: pending requests first, then new arrivals until the deadline or a full batch
            for req in list(pending):
                if (len(batch) < self.batch_size and isinstance(req, _Request) and not req.stream
                        and req.sampling_key == key):
                    batch.append(req)
                    pending.remove(req)
            while len(batch) < self.batch_size:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    req = self.queue.get(timeout=left)
                except queue.Empty:
                    break
                if req is None:
                    self.queue.put(None)  # stop after this batch
                    break
                if isinstance(req, _Request) and not req.stream and req.sampling_key == key:
                    batch.append(req)
                else:
                    pending.append(req)
            self._run_batch(batch)

    def _run_batch(self, batch: list[_Request]) -> None:
        try:
            results = self.tts.synthesize_batch([r.job for r in batch], batch_size=self.batch_size,
                                                **batch[0].sampling)
        except IndexTTS2Error as e:
            if len(batch) > 1:  # find the bad request(s): each alone
                with self._lock:
                    self.stats["batches_split"] += 1
                for req in batch:
                    self._run_batch([req])
                return
            self._fail(batch[0], e)
            return
        except Exception as e:  # noqa: BLE001 - the server must survive; the client gets a 500
            for req in batch:
                self._fail(req, e)
            return
        with self._lock:
            self.stats["batches"] += 1
            self.stats["batched_requests"] += len(batch)
            self.last_report = results[-1][2].get("batch", {})
        for req, result in zip(batch, results):
            req.result, req.batch_jobs = result, len(batch)
            req.done.set()

    def _run_stream(self, req: _Request) -> None:
        with self._lock:
            self.stats["streams"] += 1
        try:
            for chunk in self.tts.synthesize_stream(req.job.pop("text", None), req.job.pop("speaker_prompt", None),
                                                    **req.job, **req.sampling):
                req.chunks.put(chunk)
                if chunk.report is not None:
                    with self._lock:
                        self.last_report = dict(chunk.report.get("batch", {}), first_audio_s=chunk.report.get(
                            "first_audio_s"))
                if req.cancelled:  # the client went away: stop before the next segment
                    break
        except Exception as e:  # noqa: BLE001 - handed to the request's thread
            with self._lock:
                self.stats["errors"] += 1
            req.chunks.put(e)
        req.chunks.put(None)
        req.done.set()

    def _fail(self, req: _Request, error: BaseException) -> None:
        with self._lock:
            self.stats["errors"] += 1
        req.error = error
        req.done.set()

    def snapshot(self) -> dict:
        with self._lock:
            s = dict(self.stats)
            s["mean_batch"] = round(s["batched_requests"] / s["batches"], 3) if s["batches"] else None
            s["last"] = dict(self.last_report)
        cache = compile_cache.stats()
        if cache["dir"]:
            s["compilation_cache"] = cache
        return s


def wav_bytes(wave: np.ndarray, sample_rate: int) -> bytes:
    """16-bit PCM WAV bytes (clamped to [-1, 1], as :func:`write_wav`)."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(np.asarray(wave, np.float32), -1.0, 1.0), int(sample_rate), format="WAV",
             subtype="PCM_16")
    return buf.getvalue()


def pcm16(audio: np.ndarray) -> bytes:
    """Raw little-endian 16-bit PCM, quantized as soundfile's PCM_16 writer does (so a streamed response
    equals the samples of the WAV response)."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(np.asarray(audio, np.float32), -1.0, 1.0), 8000, format="RAW", subtype="PCM_16",
             endian="LITTLE")
    return buf.getvalue()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    service: SynthesisService  # set on the subclass by make_server
    server_version = "IndexTTS2-JAX"

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)

    def _json(self, status: int, payload: dict, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, error: BaseException) -> None:
        payload = {"error": str(error), "type": type(error).__name__}
        if isinstance(error, ServerBusyError):
            self._json(503, payload, {"Retry-After": "1"})
        else:
            self._json(400 if isinstance(error, IndexTTS2Error) else 500, payload)

    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path == "/health":
            tts = self.service.tts
            self._json(200, {"status": "ok", "model": str(tts.assets.source), "sample_rate": tts.sample_rate})
        elif self.path == "/stats":
            self._json(200, self.service.snapshot())
        else:
            self._json(404, {"error": f"no such endpoint: GET {self.path}", "type": "NotFound"})

    def do_POST(self):  # noqa: N802 - http.server's name
        if self.path != "/synthesize":
            self._json(404, {"error": f"no such endpoint: POST {self.path}", "type": "NotFound"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length <= 0 or length > MAX_BODY_BYTES:
                raise RequestError(f"the request needs a JSON body of 1 byte to {MAX_BODY_BYTES >> 20} MiB "
                                   f"(Content-Length {length})")
            try:
                body = json.loads(self.rfile.read(length))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise RequestError(f"the request body is not JSON: {e}") from e
            req = self.service.submit(self.service.parse(body))
        except Exception as e:  # noqa: BLE001 - answered, not raised
            self._error(e)
            return
        if req.stream:
            self._stream(req)
            return
        req.done.wait()
        if req.error is not None:
            self._error(req.error)
            return
        wave, sr, report = req.result
        data = wav_bytes(wave, sr)
        self.send_response(200)
        self.send_header("Content-Type", "audio/wav")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Audio-Seconds", f"{report['audio_seconds']:.4f}")
        self.send_header("X-RTF", str(report["batch"]["rtf"]))
        self.send_header("X-Batch-Jobs", str(req.batch_jobs))
        self.send_header("X-Segments", str(len(report["segments"])))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, req: _Request) -> None:
        chunks = self.service.stream(req)
        try:
            first = next(chunks)  # errors in the input arrive before any audio: a plain 400
        except StopIteration:
            first = None
        except Exception as e:  # noqa: BLE001
            self._error(e)
            return
        self.send_response(200)
        self.send_header("Content-Type", f"audio/L16; rate={self.service.tts.sample_rate}; channels=1")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            chunk = first
            while chunk is not None:
                data = pcm16(chunk.audio)
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
                chunk = next(chunks, None)
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            req.cancelled = True
        except Exception:  # noqa: BLE001 - an error after the audio began: end the response without the last chunk
            self.close_connection = True


def make_server(service: SynthesisService, host: str = "127.0.0.1", port: int = 8000,
                verbose: bool = False) -> http.server.ThreadingHTTPServer:
    """A threading HTTP server bound to ``host:port`` (port 0: any free port; see ``server.server_address``)
    that answers with ``service``. Run it with ``serve_forever()``; stop with ``shutdown()`` and
    ``service.close()``."""
    handler = type("Handler", (_Handler,), {"service": service})
    server = http.server.ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    server.verbose = verbose
    return server
