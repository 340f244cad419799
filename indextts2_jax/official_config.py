"""Read an official IndexTTS-2 ``config.yaml`` into the ConfigDict layout of ``configs/indextts2.py``.

``load_official_config(path)`` returns a ConfigDict with ``model`` (the yaml, key for key),
``aux`` (auxiliary model kwargs: defaults, updated from ``config.json`` files found next to the
yaml in the official ``hf_cache`` layout) and ``inference`` (infer_v2 defaults). Unknown or missing
keys raise :class:`ConfigError` naming them, so a typo or a config of another version is caught
before any weights are read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import ml_collections
import yaml

from indextts2_jax.errors import ConfigError


def _diff_keys(got: Any, want: Any, path: str, missing: list, unknown: list) -> None:
    if isinstance(want, dict):
        if not isinstance(got, dict):
            missing.append(f"{path} (expected a mapping, got {type(got).__name__})")
            return
        for k in want:
            if k not in got:
                missing.append(f"{path}.{k}".lstrip("."))
            else:
                _diff_keys(got[k], want[k], f"{path}.{k}", missing, unknown)
        for k in got:
            if k not in want:
                unknown.append(f"{path}.{k}".lstrip("."))


def _strip_strings(tree: Any) -> Any:
    # Official copies carry trailing spaces on some values ("feat2.pt ", "qwen0.6bemo4-merge/ ").
    if isinstance(tree, dict):
        return {k: _strip_strings(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_strip_strings(v) for v in tree]
    return tree.strip() if isinstance(tree, str) else tree


def load_official_config(path: str | os.PathLike, strict: bool = True) -> ml_collections.ConfigDict:
    """Parse an official ``config.yaml``; ``strict`` rejects unknown and missing keys."""
    from configs.indextts2 import inference_defaults, official_aux_config, official_model_config

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"official config not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    raw = _strip_strings(raw)
    version = raw.get("version")
    if version is not None and float(version) != 2.0:
        raise ConfigError(f"{path}: version {version} is not supported (this port implements IndexTTS-2, version 2.0)")
    reference = official_model_config().to_dict()
    missing, unknown = [], []
    _diff_keys(raw, reference, "", missing, unknown)
    if strict and (missing or unknown):
        parts = []
        if unknown:
            parts.append(f"unknown keys {unknown}")
        if missing:
            parts.append(f"missing keys {missing}")
        raise ConfigError(f"{path}: does not match the IndexTTS-2 config layout: " + "; ".join(parts))

    cfg = ml_collections.ConfigDict()
    cfg.model = ml_collections.ConfigDict(raw)
    aux = official_aux_config()
    model_dir = path.parent
    bigvgan_json = _first_existing(model_dir, ["hf_cache/bigvgan/config.json", "bigvgan/config.json"])
    if bigvgan_json is not None:
        h = json.loads(bigvgan_json.read_text())
        aux.bigvgan.update({k: h[k] for k in aux.bigvgan if k in h})
    w2v_json = _first_existing(model_dir, ["hf_cache/w2v-bert-2.0/config.json", "w2v-bert-2.0/config.json"])
    if w2v_json is not None:
        h = json.loads(w2v_json.read_text())
        aux.w2v_bert.update({k: h[k] for k in aux.w2v_bert if k in h})
    cfg.aux = aux
    cfg.inference = inference_defaults()
    return cfg


def _first_existing(root: Path, names: list[str]) -> Path | None:
    for n in names:
        p = root / n
        if p.exists():
            return p
    return None
