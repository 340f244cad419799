"""Random-weight :class:`ModelAssets` for tests and benchmarks (no files needed).

``random_assets(config, seed)`` initialises every component with its model file's ``init_params`` at the
sizes of ``config`` (a ConfigDict with ``model``/``aux``/``inference`` as in ``configs/indextts2.py``),
draws w2v-BERT statistics and the feat1/feat2 emotion matrices, and trains a tiny SentencePiece BPE.

``tiny_config()`` is ``configs/demo.py`` made consistent for the w2v-BERT path of the synthesis
pipeline: the conditioning encoders of UnifiedVoice read 1024-d features (hard-coded officially), so
the tiny w2v-BERT, the codec and the length regulator use 1024-d hidden states here (the demo recipe
uses a 160-d mel stand-in instead). ``official_config()`` is ``configs/indextts2.py``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import jax
import ml_collections
import numpy as np

from indextts2_jax.infer.assets import ModelAssets

BPE_CORPUS = (
    "the quick brown fox jumps over the lazy dog.",
    "hello world, this is a small test of the speech synthesis pipeline!",
    "she sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
    "how much wood would a woodchuck chuck if a woodchuck could chuck wood?",
    "a journey of a thousand miles begins with a single step.",
    "numbers like one two three four five six seven eight nine ten are spoken words.",
    "every morning we walk to the river and watch the boats go by.",
    "jax compiles python functions into fast programs for accelerators.",
    "zero shot voice cloning with emotion and duration control.",
    "quiet voices carry very far across the valley at night.",
)


def tiny_config(scale: int = 1, minimal: bool = False) -> ml_collections.ConfigDict:
    """The demo sizes (``configs/demo.py``) with 1024-d semantic features (see the module doc).

    ``minimal`` shrinks what dominates compile time for unit tests: a 3-stage BigVGAN (8x8x4 = 256x) with
    one resblock kernel, a 3-layer DiT, one w2v-BERT layer.
    """
    from configs import demo

    c = demo.get_config(f"scale={scale}")
    m, a = c.model, c.aux
    m.semantic_codec.hidden_size = 1024
    m.s2mel.length_regulator.in_channels = 1024
    a.w2v_bert.update(dict(hidden_size=1024, num_attention_heads=8, intermediate_size=64, num_hidden_layers=2,
                           get_emb_hidden_index=2, conv_depthwise_kernel_size=5))
    if minimal:
        a.w2v_bert.update(dict(num_hidden_layers=1, get_emb_hidden_index=1))
        m.s2mel.DiT.depth = 3
        m.semantic_codec.vocos_num_layers = 1
        a.bigvgan.update(dict(upsample_rates=[8, 8, 4], upsample_kernel_sizes=[16, 16, 8], upsample_initial_channel=32,
                              resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]]))
    out = ml_collections.ConfigDict()
    out.model, out.aux, out.inference = m, a, c.inference
    return out


def official_config() -> ml_collections.ConfigDict:
    from configs import indextts2

    out = ml_collections.ConfigDict()
    out.model = indextts2.official_model_config()
    out.aux = indextts2.official_aux_config()
    out.inference = indextts2.inference_defaults()
    return out


def tiny_bpe(vocab_size: int = 160) -> bytes:
    """A SentencePiece BPE model trained on a few English sentences (ids 0/1/2 = <s>/</s>/<unk>)."""
    from indextts2_jax.text.tokenizer import train_bpe

    with tempfile.TemporaryDirectory() as d:
        path = train_bpe(list(BPE_CORPUS), vocab_size, Path(d) / "bpe")
        return Path(path).read_bytes()


def _fill(tree, rng: np.random.Generator):
    """Random values for a tree of ShapeDtypeStructs, by leaf name: norms' ``scale``/``weight``/``*gamma`` and
    BatchNorm ``var`` 1, ``bias``/``mean``/snake ``alpha``/``beta`` 0, the timestep ``freqs`` buffer its
    fixed value, ``kernel`` N(0, 1/fan_in), tables N(0, 0.02) (the codebook N(0, 1))."""

    def leaf(path, x):
        name = str(getattr(path[-1], "key", path[-1]))
        shape = tuple(x.shape)
        if name in ("scale", "weight", "var", "norm_gamma"):
            return np.ones(shape, np.float32)
        if name == "gamma":
            return np.full(shape, 0.1, np.float32)
        if name in ("bias", "mean", "alpha", "beta"):
            return np.zeros(shape, np.float32)
        if name == "freqs":
            return np.exp(-np.log(10000.0) * np.arange(shape[0], dtype=np.float32) / shape[0]).astype(np.float32)
        std = 0.02
        if name == "kernel":
            std = 1.0 / np.sqrt(max(int(np.prod(shape[:-1])), 1))
        elif name == "codebook":
            std = 1.0
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(std))

    return jax.tree_util.tree_map_with_path(leaf, tree)


def random_params(config: ml_collections.ConfigDict, seed: int = 0, *, init: str = "fast") -> dict:
    """Component params at the sizes of ``config``. ``init="model"`` runs each model file's ``init_params``
    (its official initialisers; compiles every init, slow on a small CPU); ``init="fast"`` fills the
    shapes of those inits (``jax.eval_shape``, nothing compiled) by leaf name, see :func:`_fill`."""
    from indextts2_jax.infer import pipeline
    from indextts2_jax.models import bigvgan, campplus, gpt, s2mel, semantic_codec, w2v_bert

    cfgs = pipeline.component_configs(config)
    inits = {
        "gpt": lambda k: gpt.init_params(cfgs.gpt, k),
        "s2mel": lambda k: s2mel.init_params(cfgs.s2mel, k),
        "semantic_codec": lambda k: semantic_codec.init_params(cfgs.inference_codec, k),
        "w2v_bert": lambda k: w2v_bert.init_params(cfgs.w2v, k, num_layers=cfgs.w2v.layers_for_embedding),
        "campplus": lambda k: campplus.init_variables(cfgs.campplus, k),
        "bigvgan": lambda k: bigvgan.init_params(cfgs.bigvgan, k),
    }
    keys = jax.random.split(jax.random.PRNGKey(seed), len(inits))
    if init == "model":
        return {name: fn(k) for (name, fn), k in zip(inits.items(), keys)}
    if init != "fast":
        raise ValueError(f"init must be 'fast' or 'model', got {init!r}")
    rng = np.random.default_rng(seed)
    return {name: _fill(jax.eval_shape(fn, k), rng) for (name, fn), k in zip(inits.items(), keys)}


def random_assets(config: ml_collections.ConfigDict | None = None, seed: int = 0, *,
                  bpe_vocab_size: int = 160, init: str = "fast") -> ModelAssets:
    """A complete random-weight :class:`ModelAssets` at the sizes of ``config`` (default :func:`tiny_config`):
    params (:func:`random_params`), w2v-BERT stats, feat1/feat2 matrices and a tiny BPE."""
    from indextts2_jax.infer import pipeline

    config = tiny_config() if config is None else config
    cfgs = pipeline.component_configs(config)
    params = random_params(config, seed, init=init)
    rng = np.random.default_rng(seed + 1)
    hidden = cfgs.w2v.hidden_size
    rows = int(sum(config.model.emo_num))
    return ModelAssets(
        config=config,
        params=params,
        w2v_stats={"mean": rng.normal(0, 0.1, hidden).astype(np.float32),
                   "var": rng.uniform(0.5, 2.0, hidden).astype(np.float32)},
        spk_matrix=rng.normal(0, 1, (rows, cfgs.campplus.embedding_size)).astype(np.float32),
        emo_matrix=rng.normal(0, 0.5, (rows, cfgs.gpt.model_dim)).astype(np.float32),
        bpe_model=tiny_bpe(bpe_vocab_size),
        source=f"random_assets(seed={seed}, init={init})",
    )
