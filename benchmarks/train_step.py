"""Training step of a stage (GPT by default; ``--stage s2mel`` or ``vocoder``): step time, tokens/s, MFU.

``--stage s2mel``: the S2M task's CFM step (codes -> frozen codec vq2emb -> length regulator -> DiT,
prompt masked, CFG dropout) on ``--mel-len`` semantic frames (x 1.72 mel frames at the official
50 Hz / 86 Hz rates), CAMPPlus style vectors given. ``--stage vocoder``: the BigVGAN GAN step
(generator + MPD + CQT discriminators, both losses, one optimizer update) on ``--mel-len`` mel frames
(x 256 samples). Both at the official sizes (``--tiny``: demo sizes), random weights.

The real train step of ``indextts2_jax.train`` (the GPT task's loss: text + mel cross-entropy with
both conditioning encoders; AdamW, clipping; state donated), random weights, a random batch with
``semantic_codes`` given (no codec in the step), on all local devices (mesh data=-1 by default).

Usage::

    python -m benchmarks.train_step --tiny                          # smoke run (CPU, a minute)
    python -m benchmarks.train_step --batch 8 --mel-len 500 --text-len 100 --prompt-len 300 \
        --dtype bfloat16                                             # official size (GPU/TPU)

Columns: ``batch``, ``seq`` (GPT tokens per sequence: 34 conditioning rows + text + 2 + codes + 2),
``compile s``, ``step s`` (median of ``--steps`` timed steps after ``--warmup``), ``tok/s``
(batch x seq / step s), ``TFLOP/s`` (the task's ``flops_per_step``: 6 x non-embedding params x tokens
+ attention; a ``--remat`` recompute is not counted) and ``MFU`` (against the device's peak bf16 dense FLOP/s
from the trainer's table, or ``--peak-tflops``; empty when unknown, e.g. on CPU), ``temp GB`` (XLA's temporary
buffers of the compiled step). ``--attention einsum|xla|cudnn`` (cudnn: fused flash attention, NVIDIA GPUs,
bfloat16; GPT and S2M stages: ``config.gpt.attention``, ``config.s2mel.attention``) and, GPT stage,
``--remat none|dots|full`` (``config.gpt.remat``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np


def make_config(args):
    from configs import demo, indextts2

    if args.tiny:
        c = demo.get_config(f"stage={args.stage},batch={args.batch}")
    else:
        c = indextts2.get_config(f"stage={args.stage},batch={args.batch},dtype={args.dtype}")
    c.compute_dtype = args.dtype
    if args.stage == "gpt":
        c.gpt.attention, c.gpt.remat = args.attention, args.remat
    elif args.stage == "s2mel":
        c.s2mel.attention = args.attention
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = -1, args.fsdp, args.tensor
    c.total_steps = 10_000
    c.optimizer.warmup_steps = 10
    return c


def random_batch(task, args, rng: np.random.Generator) -> dict[str, np.ndarray]:
    mc = task.model_config
    b, d = args.batch, mc.condition_input_size
    codes = rng.integers(0, mc.number_mel_codes - 2, (b, args.mel_len)).astype(np.int32)
    return {
        "valid": np.ones((b,), bool),
        "speaker_index": rng.integers(0, 2, (b,)).astype(np.int32),
        "text_ids": rng.integers(2, mc.number_text_tokens, (b, args.text_len)).astype(np.int32),
        "text_lengths": np.full((b,), args.text_len, np.int32),
        "semantic_features": rng.normal(size=(b, args.mel_len, d)).astype(np.float32),
        "semantic_lengths": np.full((b,), args.mel_len, np.int32),
        "semantic_codes": codes,
        "prompt_features": rng.normal(size=(b, args.prompt_len, d)).astype(np.float32),
        "prompt_lengths": np.full((b,), args.prompt_len, np.int32),
    }


def random_stage_batch(task, args, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A random batch for the s2mel or vocoder task (the keys their loss functions read)."""
    b = args.batch
    if args.stage == "vocoder":
        t = args.mel_len
        return {"valid": np.ones((b,), bool), "mel": rng.normal(-5, 1, (b, t, 80)).astype(np.float32),
                "mel_lengths": np.full((b,), t, np.int32),
                "wave": (0.1 * rng.normal(size=(b, t * 256))).astype(np.float32),
                "wave_lengths": np.full((b,), t * 256, np.int32)}
    mc = task.model_config
    ratio = 2.0 if args.tiny else 22050 / 256 / 50
    n, t = args.mel_len, int(round(args.mel_len * ratio))
    codebook = task._codec.config.codebook_size
    return {"valid": np.ones((b,), bool),
            "semantic_features": rng.normal(size=(b, n, mc.length_regulator.in_channels)).astype(np.float32),
            "semantic_lengths": np.full((b,), n, np.int32),
            "semantic_codes": rng.integers(0, codebook, (b, n)).astype(np.int32),
            "mel": rng.normal(-5, 1, (b, t, mc.n_mels)).astype(np.float32), "mel_lengths": np.full((b,), t, np.int32),
            "speaker_embedding": rng.normal(size=(b, mc.style_dim)).astype(np.float32)}


def make_task(config, args, tmp: str):
    from indextts2_jax.train.recipe import write_synthetic_shards

    if args.stage == "gpt":
        from indextts2_jax.train.tasks.gpt import GptTask

        config.data.shards = str(write_synthetic_shards(tmp, num_utterances=4, valid_utterances=0,
                                                        dim=int(config.gpt.condition_input_size)))
        return GptTask(config)
    if args.stage == "vocoder":
        from indextts2_jax.train.tasks.vocoder import VocoderTask

        config.data.shards = str(write_synthetic_shards(tmp, num_utterances=4, valid_utterances=0, audio=True))
        return VocoderTask(config)
    from indextts2_jax.models import semantic_codec as sc
    from indextts2_jax.train.tasks.codec import codec_config_from, save_params
    from indextts2_jax.train.tasks.s2mel import S2melTask

    config.data.shards = str(write_synthetic_shards(tmp, num_utterances=4, valid_utterances=0, mel=True,
                                                    speaker_embedding_dim=192, codes=True))
    codec_cfg = codec_config_from(config)
    config.codec_checkpoint = str(save_params(sc.init_params(codec_cfg, jax.random.key(1)), f"{tmp}/codec.msgpack"))
    return S2melTask(config)


def run(args) -> dict:
    import flax.linen as nn

    from indextts2_jax import sharding
    from indextts2_jax.train.optim import make_optimizer
    from indextts2_jax.train.trainer import TrainState, build_step, peak_flops_per_device, step_flops

    config = make_config(args)
    with tempfile.TemporaryDirectory() as tmp:  # the task wants shards; a few synthetic records suffice
        task = make_task(config, args, tmp)
    mesh = sharding.make_mesh(dict(config.mesh))
    rules = sharding.rules_from_config(config.logical_axis_rules)
    custom = task.make_optimizer(int(config.total_steps)) if hasattr(task, "make_optimizer") else None
    tx, schedule = custom or make_optimizer(config.optimizer, int(config.total_steps))
    rng_np = np.random.default_rng(0)
    local = random_batch(task, args, rng_np) if args.stage == "gpt" else random_stage_batch(task, args, rng_np)
    batch = sharding.global_batch(local, mesh)

    def init_state(r):
        params = task.init_params(r, batch)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    rng = jax.random.key(0)
    abstract, shardings = sharding.state_shardings(init_state, mesh, rules, rng)
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
    with sharding.use_mesh(mesh, rules):
        state = jax.jit(lambda r: nn.unbox(init_state(r)), out_shardings=shardings)(rng)
        # the last phase: the full training step (a phased task, e.g. the demo vocoder's mel-only warm-up,
        # runs a lighter step before it)
        phase = len(task.phase_starts())
        step_fn = jax.jit(build_step(task, tx, schedule, phase), out_shardings=(shardings, None),
                          donate_argnums=(0,))
        t0 = time.perf_counter()
        compiled = step_fn.lower(state, batch, rng).compile()
        compile_s = time.perf_counter() - t0
        mem = compiled.memory_analysis()
        temp_gb = f"{mem.temp_size_in_bytes / 1e9:.2f}" if mem is not None else ""
        for _ in range(args.warmup):
            state, metrics = compiled(state, batch, rng)
        jax.block_until_ready(metrics)
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            state, metrics = compiled(state, batch, rng)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    tokens = task.tokens_in_batch(local)
    flops = step_flops(task, local, num_params, phase)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops_per_device(config)
    peak *= jax.device_count()
    loss = float(metrics["loss"])
    assert np.isfinite(loss), f"loss is {loss}"
    seq = task.sequence_length(local) if hasattr(task, "sequence_length") else local["mel"].shape[1]
    return {"stage": args.stage, "batch": args.batch, "seq": seq, "params M": f"{num_params / 1e6:.1f}",
            "compile s": f"{compile_s:.1f}", "step s": f"{step_s:.4f}", "tok/s": f"{tokens / step_s:.0f}",
            "TFLOP/s": f"{flops / step_s / 1e12:.3f}", "MFU": f"{flops / step_s / peak:.1%}" if peak else "",
            "temp GB": temp_gb, "loss": f"{loss:.3f}"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=["gpt", "s2mel", "vocoder"], default="gpt")
    parser.add_argument("--tiny", action="store_true", help="the demo-size model instead of the official size")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--text-len", type=int, default=100, help="text tokens per sequence")
    parser.add_argument("--mel-len", type=int, default=500,
                        help="semantic codes per sequence (~10 s at 50 Hz); vocoder: mel frames per segment")
    parser.add_argument("--prompt-len", type=int, default=300, help="prompt feature frames")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="compute dtype (default: bfloat16 on accelerators, float32 on CPU)")
    parser.add_argument("--fsdp", type=int, default=1)
    parser.add_argument("--tensor", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--attention", choices=["einsum", "xla", "cudnn"], default="einsum",
                        help="GPT and S2M stages: the attention (cudnn: fused, NVIDIA GPUs, bfloat16)")
    parser.add_argument("--remat", choices=["none", "dots", "full"], default="none",
                        help="GPT stage: blocks rematerialised in the backward")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="peak FLOP/s per device (for MFU)")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.dtype is None:
        args.dtype = "float32" if jax.devices()[0].platform == "cpu" else "bfloat16"
    row = run(args)
    cols = list(row)
    widths = [max(len(c), len(str(row[c]))) for c in cols]
    size = "demo size" if args.tiny else "official size"
    print(f"{args.stage} train step, {size}, {args.dtype}, {jax.device_count()} x {jax.devices()[0].device_kind}")
    print("| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print("| " + " | ".join(str(row[c]).ljust(w) for c, w in zip(cols, widths)) + " |")


if __name__ == "__main__":
    main()
