"""Shared config pieces: the ``key=value,...`` argument parser and the training defaults.

A config is a function ``get_config(arg: str | None) -> ConfigDict``. ``arg`` is parsed by
:func:`parse_arg` against typed defaults; an unknown key or a value of the wrong type raises
:class:`indextts2_jax.errors.ConfigError`. Launchers lock the returned config, so
``--config.typo=1`` fails loudly as well.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from indextts2_jax.errors import ConfigError

_TRUE = {"1", "true", "yes", "on", "t", "y"}
_FALSE = {"0", "false", "no", "off", "f", "n"}


def _convert(key: str, raw: str, default: Any) -> Any:
    if isinstance(default, bool):
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(f"config arg {key}={raw!r}: expected a boolean (true/false)")
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"config arg {key}={raw!r}: expected an integer") from None
    if isinstance(default, float):
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"config arg {key}={raw!r}: expected a number") from None
    if isinstance(default, (tuple, list)):
        items = [s for s in raw.replace("+", ";").split(";") if s]
        proto = default[0] if default else ""
        return tuple(_convert(key, s, proto) for s in items)
    return raw


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parse ``"k1=v1,k2=v2"`` against typed ``defaults``; returns a locked ConfigDict.

    Values take the type of their default (bool accepts true/false/1/0; tuples are written
    ``a;b;c``). Unknown keys and malformed items raise ConfigError naming them and the valid keys.
    """
    values = dict(defaults)
    if arg:
        for item in arg.split(","):
            item = item.strip()
            if not item:
                continue
            if "=" not in item:
                raise ConfigError(f"config arg {item!r} is not of the form key=value (in {arg!r})")
            key, raw = item.split("=", 1)
            key = key.strip()
            if key not in defaults:
                raise ConfigError(f"unknown config arg {key!r} (in {arg!r}); valid keys: {sorted(defaults)}")
            values[key] = _convert(key, raw, defaults[key])
    cfg = ml_collections.ConfigDict(values)
    cfg.lock()
    return cfg


def mesh_config(data: int = -1, fsdp: int = 1, tensor: int = 1) -> ml_collections.ConfigDict:
    """Device mesh axes; one -1 fills the remaining devices."""
    return ml_collections.ConfigDict({"data": data, "fsdp": fsdp, "tensor": tensor})


# Logical axis -> mesh axes. Activations: "batch" over data+fsdp. Params: FSDP over "embed",
# tensor parallelism over "mlp"/"heads"/"vocab". Names not listed stay replicated.
LOGICAL_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("codebook", "tensor"),
    ("conv_in", None),
    ("conv_out", "tensor"),
    ("kernel", None),
    ("norm", None),
)


def training_defaults() -> ml_collections.ConfigDict:
    """Defaults shared by every training stage; stage configs override what they need."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = 100_000
    c.global_batch_size = 32
    c.grad_accum_steps = 1
    c.compute_dtype = "float32"  # "bfloat16" on accelerators
    c.param_dtype = "float32"

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adamw"
    c.optimizer.learning_rate = 2e-4  # paper: AdamW, initial lr 2e-4
    c.optimizer.warmup_steps = 1000
    c.optimizer.decay = "cosine"
    c.optimizer.end_learning_rate_factor = 0.1
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.98
    c.optimizer.eps = 1e-8
    c.optimizer.weight_decay = 0.01
    c.optimizer.grad_clip_norm = 1.0

    c.freeze = ()  # regexes over "/"-joined param paths
    c.init_from = ""  # a converted official checkpoint (fine-tuning)
    c.resume = ""  # an explicit checkpoint dir to resume from

    c.mesh = mesh_config()
    c.logical_axis_rules = LOGICAL_AXIS_RULES

    # The train step's memory per device (XLA's memory analysis of each compiled step: arguments + outputs +
    # temporaries - donated) against a budget: limit_gb, or 0 = the device's own limit where it reports one
    # (GPU, TPU; a CPU reports none: no check). Over it, the run stops before its first step with the knobs to
    # turn, instead of an out-of-memory error whenever the bucket first comes up.
    c.memory = ml_collections.ConfigDict()
    c.memory.limit_gb = 0.0
    # Also compile (and check) the largest length bucket's step before the first step: the run meets its
    # largest batch at once instead of at a random later step (one more compile at start).
    c.memory.precompile_largest_bucket = False

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 1000
    c.checkpoint.keep = 3
    c.checkpoint.async_save = True

    c.log = ml_collections.ConfigDict()
    c.log.every_steps = 50
    c.log.eval_every_steps = 1000
    c.log.num_eval_batches = 4
    c.log.samples = True  # at each evaluation, the stage's samples (audio, mel images) to TensorBoard

    c.data = ml_collections.ConfigDict()
    c.data.manifest = ""
    c.data.shards = ""
    c.data.num_workers = 2
    c.data.shuffle_seed = 0
    c.data.max_audio_seconds = 20.0
    c.data.min_audio_seconds = 0.5
    c.data.max_text_tokens = 600
    c.data.length_buckets = (256, 512, 1024)
    c.data.bpe_model = ""  # only needed when the shards hold no text_ids (tokenized in the pipeline)
    c.data.prompt_source = "other"  # GPT prompt: "other" utterance of the same speaker, or the "same" one
    c.data.prompt_frames = 256  # longest prompt crop (semantic frames)
    c.data.prompt_min_frames = 64

    # GPT stage (indextts2_jax/train/tasks/gpt.py). gpt_stage 1/2/3 = the paper's three T2S stages:
    # 2 freezes the speaker conditioner and trains the emotion path with a gradient-reversal speaker
    # classifier, 3 freezes every conditioner (the task adds the regexes to ``freeze``).
    c.gpt_stage = 1
    c.codec_checkpoint = ""  # codec params (.msgpack, from the codec stage) when the shards hold no codes
    c.gpt = ml_collections.ConfigDict()
    c.gpt.condition_input_size = 1024  # prompt feature width (w2v-BERT); our extension of UnifiedVoice
    c.gpt.emotion_dim = 1024  # emotion perceiver width (official: 1024); our extension of UnifiedVoice
    c.gpt.duration_control = False  # train the paper's duration slot p (True: target_tokens = code count)
    c.gpt.duration_drop_prob = 0.3  # p zeroed per example with this probability (paper)
    c.gpt.text_weight = 0.01
    c.gpt.mel_weight = 1.0
    c.gpt.emotion_source = "prompt"  # emotion conditioning from the speaker "prompt" or the "target" utterance
    c.gpt.adversarial_weight = 0.1  # alpha of the GRL speaker classifier (stage 2; not stated in the paper)
    c.gpt.grl_scale = 1.0
    c.gpt.classifier_hidden = 256
    c.gpt.num_speakers = 0  # 0 = the shards' speaker count (dataset.json)
    # How the GPT-2 stack attends in training (nn/gpt2.py): "einsum" (ours), "xla" or "cudnn"
    # (jax.nn.dot_product_attention; cudnn = fused flash attention on NVIDIA GPUs, bfloat16/float16 compute,
    # no S x S buffers), and which blocks' activations the backward recomputes: "none", "dots" (keep the
    # matmul outputs) or "full" (keep the block inputs only).
    c.gpt.attention = "einsum"
    c.gpt.remat = "none"

    # Codec stage (indextts2_jax/train/tasks/codec.py).
    c.codec = ml_collections.ConfigDict()
    c.codec.reconstruction_loss = "l2"  # "l1" or "l2", masked
    c.codec.reconstruction_weight = 1.0
    c.codec.kmeans_batches = 4  # k-means init of the codebook from the first batches (0 = random init)
    c.codec.kmeans_iters = 10
    c.codec.dead_code_threshold = 1.0  # codes used fewer times in the batch are pulled toward
    # batch features (usage is per batch: the trainer keeps no state beside params and optimizer)
    c.codec.dead_code_weight = 0.1
    # Every N steps, codes unused in the batch := random latents of the batch (0 = off). Usage is per batch,
    # so only for batches of many more frames than codes: on the demo (~1700 frames, 256 codes) N=10
    # replaced live codes and lowered the perplexity after 300 steps from 120 to 10.
    c.codec.dead_code_replace_every = 0

    # S2M stage (indextts2_jax/train/tasks/s2mel.py). Needs codec_checkpoint (frozen codec: codes -> vq2emb).
    c.s2mel = ml_collections.ConfigDict()
    c.s2mel.gpt_checkpoint = ""  # frozen GPT (GPT-stage workdir or params msgpack) for the latent; "" = none
    c.s2mel.gpt_latent_prob = 0.5  # paper: H_GPT added to the semantic embedding with probability 0.5
    c.s2mel.prompt_fraction_min = 0.0  # prompt = floor(u * (mel_len - 1)) frames, u ~ U(min, max)
    c.s2mel.prompt_fraction_max = 1.0  # (Seed-VC style; not stated in the paper)
    c.s2mel.cond_drop_prob = 0.1  # CFG condition dropout (release: DiT class_dropout_prob, per batch)
    c.s2mel.per_example_cond_drop = False  # True: one draw per utterance instead of per batch
    c.s2mel.wavenet_dropout = True  # the WaveNet's p_dropout (model.s2mel.wavenet.p_dropout) in training
    c.s2mel.style_frames = 300  # campplus_fbank window (100 Hz) for the demo CAMPPlus style
    c.s2mel.semantic_frame_rate = 0.0  # Hz of the semantic features/codes; 0 = from the shards (w2v-BERT: 50)
    c.s2mel.sample_steps = 4  # Euler steps of the eval mel sample (cheap)
    c.s2mel.sample_cfg_rate = 0.7
    c.s2mel.attention = "einsum"  # the DiT's attention: "einsum", "xla" or "cudnn" (flash attention, GPUs, bfloat16)
    # BigVGAN for audio samples at eval (a vocoder-stage workdir or generator params msgpack; "" = mel images only)
    c.s2mel.vocoder_checkpoint = ""

    # Vocoder stage (indextts2_jax/train/tasks/vocoder.py): BigVGAN v2 GAN training. The generator is
    # ``config.aux.bigvgan`` (official keys); these are the official BigVGAN v2 (22 kHz, 80 band, 256x)
    # config.json training values unless noted.
    c.vocoder = ml_collections.ConfigDict()
    c.vocoder.segment_frames = 256  # mel frames per training crop (official segment_size 65536 samples / 256)
    c.vocoder.weight_norm = True  # train weight-normed convs (kernel = v, gain = g) as the official code
    c.vocoder.remat = False  # rematerialize each AMP block in the backward pass (saves memory at full size)
    c.vocoder.learning_rate = 1e-4  # generator and discriminators (config.json learning_rate)
    c.vocoder.discriminator_learning_rate = 1e-4
    c.vocoder.b1 = 0.8
    c.vocoder.b2 = 0.99
    c.vocoder.eps = 1e-8
    c.vocoder.weight_decay = 0.01  # torch AdamW's default, applied to every param as in the official training
    c.vocoder.lr_decay = 0.9999996  # exponential decay per step (BigVGAN v2 steps its scheduler per step)
    c.vocoder.warmup_steps = 0  # linear warm-up before the decay (official: none)
    c.vocoder.grad_clip_norm = 500.0  # clip_grad_norm: generator, MPD and CQTD/MRD clipped separately
    # Generator conv init from scratch: "official" N(0, 0.01), or "fan_in" (lecun normal) for narrow
    # generators, whose official-init output is so small that the mel loss has no gradient (BigVGAN.init_std).
    c.vocoder.generator_init = "official"
    # Steps of mel-loss-only generator training before the discriminators join (0: GAN from the first step, as
    # the official training; ParallelWaveGAN's discriminator_train_start_steps). Evaluation always scores the GAN.
    c.vocoder.discriminator_start_step = 0
    c.vocoder.lambda_mel = 15.0  # lambda_melloss (multi-scale mel L1)
    c.vocoder.lambda_adv = 1.0  # LSGAN generator loss weight
    c.vocoder.lambda_fm = 1.0  # feature matching weight (the loss itself carries BigVGAN's factor 2)
    c.vocoder.mel_loss_windows = (32, 64, 128, 256, 512, 1024, 2048)  # MultiScaleMelSpectrogramLoss
    c.vocoder.mel_loss_mels = (5, 10, 20, 40, 80, 160, 320)
    # Discriminators, official config.json keys (DiscriminatorConfig.from_official) plus cqtd_fmin.
    c.vocoder.discriminator = ml_collections.ConfigDict(dict(
        mpd_reshapes=(2, 3, 5, 7, 11), discriminator_channel_mult=1.0, use_spectral_norm=False,
        use_cqtd_instead_of_mrd=True, cqtd_filters=128, cqtd_max_filters=1024, cqtd_filters_scale=1.0,
        cqtd_dilations=(1, 2, 4), cqtd_hop_lengths=(512, 256, 256), cqtd_n_octaves=(9, 9, 9),
        cqtd_bins_per_octaves=(24, 36, 48), cqtd_fmin=32.70,
        resolutions=((1024, 120, 600), (2048, 240, 1200), (512, 50, 240)),  # MRD (v1), when not CQTD
    ))
    return c
