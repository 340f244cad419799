"""IndexTTS2 in JAX/Flax: models, conversion of official weights, training and inference.

Layout (see README "Design"):
  models/   one file per component (Config, Linen modules, ``from_torch``)
  nn/       shared layers
  audio.py  audio loading and feature front-ends
  text/     normalization, BPE, segmentation
  convert/  reading official checkpoints, strict state-dict mapping
  train/    the trainer and per-stage tasks
  infer/    synthesis pipeline and decoding loops
"""

__version__ = "0.1.0"
