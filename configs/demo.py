"""Tiny variants of every IndexTTS-2 component, for the demo recipe on 2 CPU cores.

Same structure as ``configs/indextts2.py`` (``model`` mirrors config.yaml, ``aux`` the auxiliary
models), every width and depth shrunk. The demo corpus has no pretrained w2v-BERT at hand, so the
demo index bank (codec) and the conditioning encoders read 80-band log-mel frames stacked in pairs
(160-d at ~43 Hz) instead of w2v-BERT features: ``demo.semantic_features = "mel"``.

Launch: ::

    python -m experiments.train --config configs/demo.py:stage=gpt --workdir runs/demo/gpt
"""

from __future__ import annotations

import ml_collections

from configs import common, indextts2

# Steps per stage of the demo recipe, sized so that the main job stays within ~30 min on 2 CPU cores: the GPT
# (0.6M params), the S2M and the vocoder learn slowest, the codec converges within a few hundred steps. Measured
# with the stage-wise diagnosis of the demo (experiments/demo.py; 8 held-out sentences, pocketsphinx WER):
# S2M on the recordings' own codes 94 % WER after 300 steps, 78 % after 1200; vocoder copy synthesis 86 % after
# 450 GAN steps (447 s), 62 % after 1500 mel-only steps (316 s).
DEMO_STEPS = {"codec": 300, "gpt": 900, "s2mel": 1200, "vocoder": 1500}
# The demo vocoder trains on the mel loss alone for this many steps before its discriminators join: a GAN step
# costs ~3.5x a mel-only step on the CPU, and 200 GAN steps after 1300 mel-only ones made copy synthesis worse
# (WER 62 -> 78 %, mel L1 1.01 -> 1.23): a new discriminator needs far more steps than the demo has. With
# --vocoder_steps above it (a GPU), the GAN phase follows.
DEMO_VOCODER_MEL_ONLY_STEPS = 1500


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Args: stage (gpt|codec|s2mel|vocoder), scale (width multiplier, 1 = CPU demo), steps (0: the stage's
    DEMO_STEPS), batch."""
    args = common.parse_arg(arg, stage="gpt", scale=1, steps=0, batch=8)
    if args.stage not in indextts2.STAGES:
        from indextts2_jax.errors import ConfigError

        raise ConfigError(f"stage={args.stage!r}: expected one of {indextts2.STAGES}")
    if args.scale < 1:
        from indextts2_jax.errors import ConfigError

        raise ConfigError(f"scale={args.scale}: must be >= 1")
    s = args.scale
    c = common.training_defaults()
    c.stage = args.stage
    c.total_steps = args.steps or DEMO_STEPS[args.stage]
    c.global_batch_size = args.batch
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 20
    c.checkpoint.every_steps = 100
    c.log.every_steps = 10
    # three evaluations per stage (and one at the end): each costs ~15 s of eval batches and samples on the CPU,
    # and at every 100 steps they took 200-230 s of the S2M's and the vocoder's 760 / 550 s in the demo
    c.log.eval_every_steps = max(100, c.total_steps // 3)
    c.data.num_workers = 1
    c.data.max_audio_seconds = 12.0
    c.data.max_text_tokens = 160
    c.data.length_buckets = (128, 256, 512)
    c.data.prompt_frames = 128
    c.data.prompt_min_frames = 32
    c.gpt.condition_input_size = 160  # the stacked-mel stand-in for w2v-BERT features
    c.gpt.emotion_dim = 64 * s  # the emotion perceiver at the model width (official 1024: 9.5M params)
    c.gpt.classifier_hidden = 64
    c.codec.kmeans_batches = 2
    if args.stage == "gpt":
        c.data.length_buckets = (128, 256, 384)  # within the demo GPT's max_mel_tokens (400)
    if args.stage == "s2mel":
        c.data.length_buckets = (64, 128, 256)  # stacked-mel frames: up to 512 mel frames (~6 s) per crop
        c.s2mel.style_frames = 200  # 2 s of campplus_fbank for the demo CAMPPlus
    if args.stage == "vocoder":
        # 32-frame crops (8192 samples), narrow discriminators, a short mel-loss ladder: minutes on 2 CPU cores
        # (the generator is aux.bigvgan below).
        c.vocoder.segment_frames = 32
        c.vocoder.generator_init = "fan_in"  # 64 channels: the official N(0, 0.01) starts at ~1e-9 output
        c.vocoder.learning_rate = 2e-3  # mel-only warm-up: 2e-3 reached mel L1 1.01 in 1500 steps, 1e-3 1.19
        c.vocoder.discriminator_start_step = DEMO_VOCODER_MEL_ONLY_STEPS
        c.vocoder.discriminator_learning_rate = 5e-4
        c.vocoder.mel_loss_windows = (32, 64, 128, 256, 512, 1024)
        c.vocoder.mel_loss_mels = (5, 10, 20, 40, 80, 160)
        c.vocoder.discriminator.update(dict(  # one CQT scale of 8 filters: ~1.3 s CPU per step (3 s with two of 16)
            discriminator_channel_mult=0.125, cqtd_filters=8, cqtd_max_filters=8, cqtd_dilations=(1, 2),
            cqtd_hop_lengths=(256,), cqtd_n_octaves=(9,), cqtd_bins_per_octaves=(24,)))

    feat_dim = 160  # stacked mel pairs stand in for w2v-BERT's 1024-d features
    codebook = 256
    m = indextts2.official_model_config()
    m.dataset.bpe_model = "bpe.model"
    m.gpt.update(dict(
        model_dim=64 * s, heads=4, layers=2 * s, max_mel_tokens=400, max_text_tokens=160,
        number_text_tokens=512, number_mel_codes=codebook + 2, start_mel_token=codebook,
        stop_mel_token=codebook + 1,
    ))
    m.gpt.condition_module.update(dict(output_size=32 * s, linear_units=64 * s, attention_heads=2, num_blocks=1))
    m.gpt.emo_condition_module.update(dict(output_size=32 * s, linear_units=64 * s, attention_heads=2, num_blocks=1))
    m.semantic_codec.update(dict(codebook_size=codebook, hidden_size=feat_dim, codebook_dim=8, vocos_dim=64 * s,
                                 vocos_intermediate_dim=128 * s, vocos_num_layers=2,
                                 input_norm=True))  # raw log-mel in: see SemanticCodecConfig.input_norm
    m.s2mel.length_regulator.update(dict(channels=64 * s, in_channels=feat_dim))
    m.s2mel.DiT.update(dict(hidden_dim=64 * s, num_heads=2, depth=5, content_dim=64 * s))
    m.s2mel.wavenet.update(dict(hidden_dim=64 * s, num_layers=2))
    m.s2mel.style_encoder.dim = 64
    c.model = m

    a = indextts2.official_aux_config()
    a.w2v_bert.update(dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
                           get_emb_hidden_index=2))
    a.campplus.update(dict(embedding_size=64, growth_rate=8, bn_size=2, init_channels=32))
    a.bigvgan.update(dict(upsample_initial_channel=64 * s, resblock_kernel_sizes=[3, 7],
                          resblock_dilation_sizes=[[1, 3], [1, 3]]))
    c.aux = a
    c.inference = indextts2.inference_defaults()
    c.inference.diffusion_steps = 10

    c.demo = ml_collections.ConfigDict(dict(
        semantic_features="mel",  # w2v-BERT stand-in (see module docstring)
        num_utterances=2000,
        num_speakers=12,
        bpe_vocab_size=512,
        holdout_utterances=20,
    ))
    return c
