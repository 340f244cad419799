"""The tiny synthesizer that the synthesis and server tests share (its jitted stages are shared by every
synthesizer of the same config in a process, so the second test file on a worker compiles nothing new)."""

from __future__ import annotations

from indextts2_jax.infer import pipeline
from indextts2_jax.infer.random_assets import random_assets, tiny_config


def tiny_tts(model_dir) -> pipeline.IndexTTS2:
    """The tiny official-format model directory written into ``model_dir`` and loaded through
    ``from_pretrained`` (the official loader) when torch is there to write it, else ``random_assets`` at the
    same kind of sizes; 2 diffusion steps."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return pipeline.IndexTTS2(random_assets(tiny_config(minimal=True), seed=0), diffusion_steps=2)
    from indextts2_jax.convert.tiny_official import make_tiny_official_model_dir

    make_tiny_official_model_dir(model_dir, seed=0)
    model = pipeline.IndexTTS2.from_pretrained(model_dir, diffusion_steps=2)
    assert model.assets.source.startswith("official:")
    return model
