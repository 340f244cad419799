"""Everything synthesis needs, in our param format, whatever it was loaded from.

``ModelAssets`` is the hand-off between loading (an official model directory converted with
``indextts2_jax.convert.official``, a converted checkpoint, an exported bundle, or a training
workdir) and the synthesis pipeline (``indextts2_jax.infer.pipeline``). One param format
everywhere: a nested dict of arrays per component, as each model file's ``from_torch`` produces.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import ml_collections
import numpy as np

# Component name -> what its params are (the keys of ``ModelAssets.params``).
COMPONENTS = {
    "gpt": "UnifiedVoice (models/gpt.py), from gpt.pth",
    "s2mel": "length regulator + gpt_layer + CFM DiT (models/s2mel.py), from s2mel.pth",
    "semantic_codec": "RepCodec (models/semantic_codec.py), from the MaskGCT semantic codec safetensors",
    "w2v_bert": "w2v-BERT 2.0 layers 0..16 (models/w2v_bert.py), from facebook/w2v-bert-2.0 safetensors",
    "campplus": "CAMPPlus {'params', 'batch_stats'} (models/campplus.py), from campplus_cn_common.bin",
    "bigvgan": "BigVGAN v2 generator (models/bigvgan.py), from bigvgan_generator.pt",
}


@dataclass
class ModelAssets:
    """A loaded IndexTTS-2 model.

    config: layout of ``configs/indextts2.py``: ``model`` (config.yaml), ``aux`` (w2v_bert, campplus,
        bigvgan kwargs), ``inference`` (infer_v2 defaults).
    params: component name (see ``COMPONENTS``) -> params tree (NumPy or jax arrays).
    w2v_stats: {"mean": (1024,), "var": (1024,)} for normalizing w2v-BERT hidden states; None for a model
        whose semantic front-end is the stacked mel (``inference.semantic_features == "mel"``, see
        ``indextts2_jax.infer.configs``), e.g. one exported from the demo's training workdirs.
    spk_matrix: feat1.pt, (73, 192) CAMPPlus-space rows, split by ``config.model.emo_num``; None when the
        model has no emotion matrices (a trained demo model): emotion vectors are then unavailable.
    emo_matrix: feat2.pt, (73, 1280) emotion vectors, same split (None with spk_matrix).
    bpe_model: the SentencePiece model file's bytes.
    source: where it came from (a path and its kind), for messages.
    """

    config: ml_collections.ConfigDict
    params: dict[str, Any]
    w2v_stats: dict[str, np.ndarray] | None
    spk_matrix: np.ndarray | None
    emo_matrix: np.ndarray | None
    bpe_model: bytes
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def missing_components(self) -> list[str]:
        """Components synthesis needs (per the config's semantic front-end) that ``params`` lacks."""
        from indextts2_jax.infer.configs import required_components

        return [c for c in required_components(self.config) if c not in self.params]
