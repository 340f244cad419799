"""Serve IndexTTS-2 over HTTP (``indextts2-serve``): one model kept warm, concurrent requests batched.

    python -m experiments.serve --model bundle/ --port 8000 [--batch_size 8 --max_wait_ms 25] [--warmup voice.wav]
    curl -s localhost:8000/synthesize -d '{"text": "Hello there.", "speaker_prompt": "/data/voice.wav"}' -o out.wav
    curl -sN localhost:8000/synthesize -d '{"text": "...", "speaker_prompt": "/data/voice.wav", "stream": true}' \\
        | aplay -f S16_LE -r 22050 -c 1

``--model`` takes what ``experiments.synthesize`` takes (an official model directory, a converted checkpoint,
a bundle, or ``random:tiny``). ``--warmup PROMPT`` synthesizes a sentence at every batch size bucket before
listening, so the first clients do not wait for compilation (``--warmup_tokens N,N`` adds outputs of those code
counts: their length buckets); ``--compilation_cache DIR`` keeps the compiled
programs on disk, so a restarted server skips XLA's compiles (``GET /stats`` counts the cache hits). The
endpoints and the request keys: ``indextts2_jax/infer/server.py``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from experiments import run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="indextts2-serve", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="model dir / bundle / checkpoint, or random:tiny|random:official")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    p.add_argument("--port", type=int, default=8000, help="port (0: any free port, printed)")
    p.add_argument("--batch_size", type=int, default=8, help="most requests per device batch")
    p.add_argument("--max_wait_ms", type=float, default=25.0, help="how long a request waits for batch mates")
    p.add_argument("--max_queue", type=int, default=256, help="most waiting requests; more answer 503")
    p.add_argument("--prompt_root", help="confine prompt paths to this folder")
    p.add_argument("--prompt_dir", help="where uploaded prompts are kept (default: a temporary folder)")
    p.add_argument("--diffusion_steps", type=int, default=None, help="CFM steps (default 25)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--attention", default="einsum", choices=("einsum", "xla", "cudnn"),
                   help="the S2M estimator's attention (cudnn: flash attention, NVIDIA GPUs, --dtype bfloat16)")
    p.add_argument("--warmup", metavar="PROMPT",
                   help="before listening, synthesize a sentence with this speaker prompt at every batch size "
                        "bucket up to --batch_size (1, 2, 4, 8)")
    p.add_argument("--warmup_tokens", type=lambda v: [int(x) for x in v.split(",") if x], default=[],
                   metavar="N,N,...", help="with --warmup, also warm outputs of these code counts (their length "
                                           "buckets; ~50 codes per second of speech), e.g. 100,250,500")
    p.add_argument("--compilation_cache", metavar="DIR",
                   help="JAX's persistent compilation cache: a restarted server reads its compiled stages here")
    p.add_argument("--emotion_text_model",
                   help="the text-to-emotion model folder for jobs with use_emotion_text / emotion_text (default: "
                        "the one an official model directory names)")
    p.add_argument("--verbose", action="store_true", help="log every request")
    return p


def _warm_up_row(r: dict) -> str:
    codes = "" if r["tokens"] is None else f", {r['tokens']} codes"
    return f"batch {r['batch']}{codes} {r['seconds']:.1f} s ({r['new_compiles']} compiles)"


def main(argv=None, tts=None, ready: threading.Event | None = None, servers: list | None = None) -> None:
    """Build the model (or use ``tts``), serve until SIGINT/SIGTERM. ``ready`` is set once listening and
    ``servers`` receives the server (tests)."""
    from experiments.synthesize import load_model
    from indextts2_jax.infer.server import SynthesisService, make_server

    args = build_parser().parse_args(argv)
    if args.compilation_cache:
        from indextts2_jax import compile_cache

        compile_cache.enable(args.compilation_cache)
    if tts is None:
        tts = load_model(args.model, args.dtype, diffusion_steps=args.diffusion_steps, attention=args.attention,
                         emotion_text_model=args.emotion_text_model)
    service = SynthesisService(tts, batch_size=args.batch_size, max_wait_ms=args.max_wait_ms,
                               prompt_dir=args.prompt_dir, prompt_root=args.prompt_root,
                               max_queue=args.max_queue)
    if args.warmup:
        try:
            rows = service.warm_up(args.warmup, tokens=args.warmup_tokens)
        except BaseException:
            service.close()
            raise
        print("warm-up: " + ", ".join(_warm_up_row(r) for r in rows), file=sys.stderr)
    server = make_server(service, args.host, args.port, verbose=args.verbose)
    host, port = server.server_address[:2]
    print(f"serving {tts.assets.source} on http://{host}:{port} (batch {service.batch_size}, "
          f"wait {args.max_wait_ms} ms)", file=sys.stderr, flush=True)
    if servers is not None:
        servers.append(server)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):  # shutdown() must come from another thread
            signal.signal(sig, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    if ready is not None:
        ready.set()
    try:
        server.serve_forever()
    finally:
        server.server_close()
        service.close()


def run(argv=None) -> None:
    """Console-script entry point: errors about the input end the program with a message, not a traceback."""
    run_cli(main, argv)


if __name__ == "__main__":
    run()
