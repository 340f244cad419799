"""IndexTTS-2 at the official sizes: every value of the official ``config.yaml`` plus training defaults.

``config.model`` mirrors the official ``config.yaml`` key for key (reference §2), so that
``indextts2_jax.official_config.load_official_config("config.yaml").model`` equals it.
``config.aux`` holds the auxiliary models that config.yaml only names (w2v-BERT 2.0, CAMPPlus,
BigVGAN v2), with the constructor kwargs of their official checkpoints. ``config.inference``
holds infer_v2's defaults.

Launch (the trainer stages): ::

    python -m experiments.train --config configs/indextts2.py:stage=gpt --workdir /tmp/gpt
"""

from __future__ import annotations

import ml_collections

from configs import common

STAGES = ("gpt", "codec", "s2mel", "vocoder")


def official_model_config() -> ml_collections.ConfigDict:
    """The official IndexTTS-2 ``config.yaml`` (``version: 2.0``), every key and value."""
    m = ml_collections.ConfigDict()
    m.dataset = dict(
        bpe_model="bpe.model",
        sample_rate=24000,
        squeeze=False,
        mel=dict(sample_rate=24000, n_fft=1024, hop_length=256, win_length=1024, n_mels=100, mel_fmin=0,
                 normalize=False),
    )
    m.gpt = dict(
        model_dim=1280,
        max_mel_tokens=1815,
        max_text_tokens=600,
        heads=20,
        use_mel_codes_as_input=True,
        mel_length_compression=1024,
        layers=24,
        number_text_tokens=12000,
        number_mel_codes=8194,
        start_mel_token=8192,
        stop_mel_token=8193,
        start_text_token=0,
        stop_text_token=1,
        train_solo_embeddings=False,
        condition_type="conformer_perceiver",
        condition_module=dict(output_size=512, linear_units=2048, attention_heads=8, num_blocks=6,
                              input_layer="conv2d2", perceiver_mult=2),
        emo_condition_module=dict(output_size=512, linear_units=1024, attention_heads=4, num_blocks=4,
                                  input_layer="conv2d2", perceiver_mult=2),
    )
    m.semantic_codec = dict(codebook_size=8192, hidden_size=1024, codebook_dim=8, vocos_dim=384,
                            vocos_intermediate_dim=2048, vocos_num_layers=12)
    m.s2mel = dict(
        preprocess_params=dict(
            sr=22050,
            spect_params=dict(n_fft=1024, win_length=1024, hop_length=256, n_mels=80, fmin=0, fmax="None"),
        ),
        dit_type="DiT",
        reg_loss_type="l1",
        style_encoder=dict(dim=192),
        length_regulator=dict(channels=512, is_discrete=False, in_channels=1024, content_codebook_size=2048,
                              sampling_ratios=[1, 1, 1, 1], vector_quantize=False, n_codebooks=1,
                              quantizer_dropout=0.0, f0_condition=False, n_f0_bins=512),
        DiT=dict(hidden_dim=512, num_heads=8, depth=13, class_dropout_prob=0.1, block_size=8192, in_channels=80,
                 style_condition=True, final_layer_type="wavenet", target="mel", content_dim=512,
                 content_codebook_size=1024, content_type="discrete", f0_condition=False, n_f0_bins=512,
                 content_codebooks=1, is_causal=False, long_skip_connection=True, zero_prompt_speech_token=False,
                 time_as_token=False, style_as_token=False, uvit_skip_connection=True,
                 add_resblock_in_transformer=False),
        wavenet=dict(hidden_dim=512, num_layers=8, kernel_size=5, dilation_rate=1, p_dropout=0.2,
                     style_condition=True),
    )
    m.gpt_checkpoint = "gpt.pth"
    m.w2v_stat = "wav2vec2bert_stats.pt"
    m.s2mel_checkpoint = "s2mel.pth"
    m.emo_matrix = "feat2.pt"
    m.spk_matrix = "feat1.pt"
    m.emo_num = [3, 17, 2, 8, 4, 5, 10, 24]
    m.qwen_emo_path = "qwen0.6bemo4-merge/"
    m.vocoder = dict(type="bigvgan", name="nvidia/bigvgan_v2_22khz_80band_256x")
    m.version = 2.0
    return m


def official_aux_config() -> ml_collections.ConfigDict:
    """Constructor kwargs of the auxiliary models (their own config files, not config.yaml)."""
    a = ml_collections.ConfigDict()
    # facebook/w2v-bert-2.0 config.json (Wav2Vec2BertConfig); infer_v2 reads hidden_states[17].
    a.w2v_bert = dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        feature_projection_input_dim=160, hidden_act="swish", layer_norm_eps=1e-5,
        position_embeddings_type="relative_key", left_max_position_embeddings=64, right_max_position_embeddings=8,
        conv_depthwise_kernel_size=31, add_adapter=False, use_intermediate_ffn_before_adapter=False,
        max_source_positions=5000, get_emb_hidden_index=17,
    )
    # SeamlessM4TFeatureExtractor (preprocessor_config.json of w2v-bert-2.0).
    a.w2v_bert_features = dict(feature_size=80, num_mel_bins=80, sampling_rate=16000, stride=2, padding_value=1.0)
    # CAMPPlus(feat_dim=80, embedding_size=192) with the class defaults.
    a.campplus = dict(feat_dim=80, embedding_size=192, growth_rate=32, bn_size=4, init_channels=128,
                      config_str="batchnorm-relu", memory_efficient=True)
    # nvidia/bigvgan_v2_22khz_80band_256x config.json (generator part).
    a.bigvgan = dict(
        resblock="1", upsample_rates=[4, 4, 2, 2, 2, 2], upsample_kernel_sizes=[8, 8, 4, 4, 4, 4],
        upsample_initial_channel=1536, resblock_kernel_sizes=[3, 7, 11],
        resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]], use_tanh_at_final=False, use_bias_at_final=False,
        activation="snakebeta", snake_logscale=True, num_mels=80, n_fft=1024, hop_size=256, win_size=1024,
        sampling_rate=22050, fmin=0, fmax=None,
    )
    return a


def inference_defaults() -> ml_collections.ConfigDict:
    """infer_v2's defaults (reference §5.6, §8.3, §11)."""
    return ml_collections.ConfigDict(dict(
        prompt_max_seconds=15.0,
        max_text_tokens_per_segment=120,
        interval_silence_ms=200,
        do_sample=True, num_beams=3, top_k=30, top_p=0.8, temperature=0.8, repetition_penalty=10.0,
        length_penalty=0.0, max_mel_tokens=1500,
        diffusion_steps=25, inference_cfg_rate=0.7, code_to_frame_ratio=1.72,
    ))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Official-size IndexTTS-2. Args: stage (gpt|codec|s2mel|vocoder), batch, steps, dtype."""
    args = common.parse_arg(arg, stage="gpt", batch=32, steps=100_000, dtype="float32")
    if args.stage not in STAGES:
        from indextts2_jax.errors import ConfigError

        raise ConfigError(f"stage={args.stage!r}: expected one of {STAGES}")
    c = common.training_defaults()
    c.stage = args.stage
    c.global_batch_size = args.batch
    c.total_steps = args.steps
    c.compute_dtype = args.dtype
    # official lengths reach ~2450 GPT positions: meet the largest bucket (and the memory check) at start
    c.memory.precompile_largest_bucket = True
    c.model = official_model_config()
    c.aux = official_aux_config()
    c.inference = inference_defaults()
    return c
