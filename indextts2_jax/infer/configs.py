"""The model configs of a :class:`~indextts2_jax.infer.assets.ModelAssets` config, and its semantic front-end.

One place for the wiring that conversion, export, random assets and the synthesis pipeline all need
(``component_configs``). The assets config has the layout of ``configs/indextts2.py``: ``model``
(config.yaml), ``aux`` (w2v-BERT, CAMPPlus, BigVGAN kwargs), ``inference`` (infer_v2 defaults), and
optionally ``extensions`` (our additions to the official config, written by the workdir export):

* ``extensions.gpt``: ``condition_input_size`` (width of the prompt features the conditioning
  conformers read; officially 1024 = w2v-BERT), ``emotion_dim`` (the emotion perceiver's width; officially
  1024) and ``duration_control`` (the trained duration slot).

Semantic front-end (:func:`semantic_front_end`), ``inference.semantic_features``:

* ``"w2v_bert"`` (official): normalised w2v-BERT 2.0 ``hidden_states[k]``, 1024-d at 50 Hz; S2M target
  frames per code ``inference.code_to_frame_ratio`` (1.72 ~ 86.13 Hz mel / 50 Hz codes).
* ``"mel"`` (the demo's stand-in, ``demo.semantic_features = "mel"`` of configs/demo.py): two consecutive
  80-band 22.05 kHz log-mel frames concatenated (``mel_stacked`` of data_pipeline/preprocess.py), 160-d at
  ~43 Hz; one code per :data:`MEL_STACK` mel frames, so S2M target frames per code = 2 exactly and the code
  rate is 22050 / 256 / 2 = 43.07 codes per second. No w2v-BERT params or statistics are needed.

When ``inference.semantic_features`` is absent, ``demo.semantic_features`` (a training config) is read,
else the official front-end is assumed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from indextts2_jax.errors import ConfigError

SEMANTIC_FRONT_ENDS = ("w2v_bert", "mel")
MEL_STACK = 2  # mel frames per stacked-mel feature frame (data_pipeline.preprocess ``mel_stacked``)
DEFAULT_CODE_TO_FRAME_RATIO = 1.72  # infer_v2: target mel frames = (code_lens * 1.72).long()


def _get(config, key: str, default=None):
    """``config[key]`` for a ConfigDict or a dict, else ``default``."""
    if config is None:
        return default
    try:
        return config[key] if key in config else default
    except TypeError:
        return default


def _plain(d) -> dict:
    return d.to_dict() if hasattr(d, "to_dict") else dict(d)


def semantic_front_end(config) -> str:
    """``"w2v_bert"`` or ``"mel"``: what the codec and the GPT conditioning read (see the module docstring)."""
    value = _get(_get(config, "inference"), "semantic_features")
    if value is None:
        value = _get(_get(config, "demo"), "semantic_features")
    if value is None:
        return "w2v_bert"
    if value not in SEMANTIC_FRONT_ENDS:
        raise ConfigError(f"semantic_features={value!r}: expected one of {SEMANTIC_FRONT_ENDS}")
    return str(value)


@dataclasses.dataclass(frozen=True)
class ComponentConfigs:
    """Each model file's config dataclass for one assets config (see :func:`component_configs`).

    Also indexable by component name as in ``ModelAssets.params``: ``cc["gpt"]``, ``cc["s2mel"]``,
    ``cc["semantic_codec"]`` (= ``codec``), ``cc["w2v_bert"]`` (= ``w2v``), ``cc["campplus"]``, ``cc["bigvgan"]``.
    """

    gpt: Any  # models.gpt.UnifiedVoiceConfig
    s2mel: Any  # models.s2mel.S2MelConfig
    codec: Any  # models.semantic_codec.SemanticCodecConfig (with its decoder, as trained/converted)
    w2v: Any  # models.w2v_bert.W2VBertConfig
    campplus: Any  # models.campplus.CAMPPlusConfig
    bigvgan: Any  # models.bigvgan.BigVGANConfig
    mel: Any  # audio.MelConfig (the S2M / BigVGAN log-mel)
    semantic_features: str = "w2v_bert"

    _ALIASES = {"semantic_codec": "codec", "w2v_bert": "w2v"}

    def __getitem__(self, name: str):
        field = self._ALIASES.get(name, name)
        if field not in {f.name for f in dataclasses.fields(self)}:
            raise KeyError(name)
        return getattr(self, field)

    @property
    def inference_codec(self):
        """The codec config without its decoder (synthesis only quantizes and looks codes up)."""
        return dataclasses.replace(self.codec, with_decoder=False)

    @property
    def semantic_dim(self) -> int:
        """Width of the semantic features: w2v-BERT hidden size, or 2 x n_mels for the stacked mel."""
        return MEL_STACK * self.mel.num_mels if self.semantic_features == "mel" else self.w2v.hidden_size

    @property
    def semantic_rate(self) -> float:
        """Semantic feature frames (= codes) per second of audio at the front-end's own rate."""
        if self.semantic_features == "mel":
            return self.mel.sampling_rate / self.mel.hop_size / MEL_STACK
        return 50.0  # w2v-BERT: 16 kHz, 10 ms fbank hop, stride 2

    def check_front_end(self) -> None:
        """ConfigError when the codec / GPT conditioning / length regulator widths do not fit the front-end."""
        dim = self.semantic_dim
        problems = []
        if self.codec.hidden_size != dim:
            problems.append(f"semantic_codec.hidden_size={self.codec.hidden_size}")
        if self.gpt.condition_input_size != dim:
            problems.append(f"gpt condition_input_size={self.gpt.condition_input_size} (extensions.gpt)")
        if self.s2mel.length_regulator.in_channels != dim:
            problems.append(f"s2mel length_regulator.in_channels={self.s2mel.length_regulator.in_channels}")
        if problems:
            raise ConfigError(f"the {self.semantic_features!r} semantic front-end gives {dim}-d features, but "
                              + ", ".join(problems))


def component_configs(config) -> ComponentConfigs:
    """The model configs of an assets config (``model``/``aux``/``inference``[/``extensions``] layout).

    Wiring beyond each section's own kwargs:

    * GPT: ``extensions.gpt`` (``condition_input_size``, ``emotion_dim``, ``duration_control``) when present;
    * S2M ``gpt_layer``: input width = the GPT's ``model_dim``, output width = the length regulator's
      ``in_channels`` (officially 1280 -> 256 -> 128 -> 1024, both hard-coded there);
    * S2M frames per code: :data:`MEL_STACK` for the ``"mel"`` front-end, else
      ``inference.code_to_frame_ratio`` (default 1.72).
    """
    from indextts2_jax import audio as audio_lib
    from indextts2_jax.models import bigvgan, campplus, gpt, s2mel, semantic_codec, w2v_bert

    model, aux = config.model, config.aux
    front_end = semantic_front_end(config)
    g = gpt.UnifiedVoiceConfig.from_official(_plain(model.gpt))
    ext = _get(_get(config, "extensions"), "gpt")
    if ext is not None:
        ext = _plain(ext)
        unknown = set(ext) - {"condition_input_size", "emotion_dim", "duration_control"}
        if unknown:
            raise ConfigError(f"extensions.gpt: unknown keys {sorted(unknown)}")
        g = dataclasses.replace(g, **{k: (bool(v) if k == "duration_control" else int(v)) for k, v in ext.items()})
    s = s2mel.S2MelConfig.from_official(_plain(model.s2mel))
    if front_end == "mel":
        ratio = float(MEL_STACK)
    else:
        ratio = float(_get(_get(config, "inference"), "code_to_frame_ratio", DEFAULT_CODE_TO_FRAME_RATIO))
    s = dataclasses.replace(s, gpt_latent_dim=g.model_dim, frames_per_code=ratio,
                            gpt_layer_dims=tuple(s.gpt_layer_dims[:-1]) + (s.length_regulator.in_channels,))
    return ComponentConfigs(
        gpt=g, s2mel=s,
        codec=semantic_codec.SemanticCodecConfig.from_official(_plain(model.semantic_codec)),
        w2v=w2v_bert.W2VBertConfig.from_official(_plain(aux.w2v_bert)),
        campplus=campplus.CAMPPlusConfig.from_official(_plain(aux.campplus)),
        bigvgan=bigvgan.BigVGANConfig.from_official(_plain(aux.bigvgan)),
        mel=audio_lib.MelConfig.from_official(_plain(model.s2mel.preprocess_params)),
        semantic_features=front_end,
    )


def required_components(config) -> tuple[str, ...]:
    """The ``ModelAssets.params`` components synthesis needs with this config's front-end."""
    names = ("gpt", "s2mel", "semantic_codec", "w2v_bert", "campplus", "bigvgan")
    if semantic_front_end(config) == "mel":
        return tuple(n for n in names if n != "w2v_bert")
    return names


__all__ = ["ComponentConfigs", "DEFAULT_CODE_TO_FRAME_RATIO", "MEL_STACK", "SEMANTIC_FRONT_ENDS", "component_configs",
           "required_components", "semantic_front_end"]
