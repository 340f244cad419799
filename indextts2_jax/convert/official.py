"""Load an official IndexTTS-2 model directory into :class:`ModelAssets`, convert once, cache.

Layout (reference §3.1-3.2; names as the official ``infer_v2.py`` / ``utils/model_download.py``
resolve them)::

    <model_dir>/config.yaml, gpt.pth, s2mel.pth, bpe.model (config: dataset.bpe_model),
                wav2vec2bert_stats.pt (w2v_stat), feat1.pt (spk_matrix), feat2.pt (emo_matrix)
    <model_dir>/hf_cache/w2v-bert-2.0/{config.json, model.safetensors}
    <model_dir>/hf_cache/semantic_codec_model.safetensors
    <model_dir>/hf_cache/campplus_cn_common.bin
    <model_dir>/hf_cache/bigvgan/{config.json, bigvgan_generator.pt}

Each auxiliary model is also found in the older HF hub cache layout
(``hf_cache/models--<owner>--<name>/snapshots/<hash>/...``, ``refs/main`` preferred) and the
semantic codec as ``semantic_codec/model.safetensors``; any of them can be given explicitly.
Nothing is downloaded: a missing file raises :class:`ModelDirectoryError` listing every missing
file and where it was looked for.

Conversion runs each model's ``from_torch`` (strict). Its result is cached under
``<model_dir>/jax_cache/<fingerprint>/`` in the converted-checkpoint format below, keyed by the
source files' sizes and mtimes and the config; a later load reads the cache without torch.

Converted-checkpoint format (``save_converted`` / ``load_converted``)::

    converted.json          format/version, config (model, aux, inference), components with file,
                            parameter count, bytes, dtype; source; fingerprint
    params/<component>.msgpack   flax msgpack of the component's params tree (one per component)
    w2v_stats_mean.npy, w2v_stats_var.npy, spk_matrix.npy, emo_matrix.npy
    bpe.model

``load_assets(path)`` takes any of the three forms (official directory, converted checkpoint, inference
bundle of ``indextts2_jax.export``). ``component_configs(config)`` (``indextts2_jax.infer.configs``,
re-exported here) gives each model file's config dataclass from ``ModelAssets.config``.

Params files use flax msgpack (``flax.serialization``) everywhere (cache, converted checkpoints,
export bundles): one self-describing file per component, bfloat16 supported, no torch.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from indextts2_jax.errors import CheckpointError, ConfigError, MissingComponentsError, ModelDirectoryError
from indextts2_jax.infer.assets import COMPONENTS, ModelAssets
from indextts2_jax.infer.configs import component_configs  # noqa: F401  (re-exported: one wiring for all)

CONVERTED_FORMAT = "indextts2-jax-converted"
CONVERTED_VERSION = 1
CACHE_VERSION = 1  # bump when a converter's output changes, to invalidate old caches

# HF hub repos of the auxiliary models (for the snapshot layout).
W2V_BERT_REPO = "facebook/w2v-bert-2.0"
SEMANTIC_CODEC_REPO = "amphion/MaskGCT"
CAMPPLUS_REPO = "funasr/campplus"
BIGVGAN_REPO = "nvidia/bigvgan_v2_22khz_80band_256x"

# Counters for tests and messages: how many torch files were read and components converted in this process.
STATS = {"torch_reads": 0, "conversions": 0, "cache_hits": 0}


# ---------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------
def _config_to_json(config: ml_collections.ConfigDict) -> dict:
    return json.loads(json.dumps(config.to_dict()))


# ---------------------------------------------------------------------------------------------
# resolving the files
# ---------------------------------------------------------------------------------------------
def _snapshots(hf_cache: Path, repo: str) -> list[Path]:
    """Snapshot folders of ``repo`` in an HF hub cache, the ``refs/main`` one first."""
    base = hf_cache / f"models--{repo.replace('/', '--')}"
    out: list[Path] = []
    ref = base / "refs" / "main"
    if ref.is_file():
        snap = base / "snapshots" / ref.read_text().strip()
        if snap.is_dir():
            out.append(snap)
    out += [Path(p) for p in sorted(glob.glob(str(base / "snapshots" / "*"))) if Path(p) not in out]
    return out


def _find(candidates: list[Path], names: tuple[str, ...]) -> Path | None:
    """The first candidate folder holding every file in ``names`` (or the first existing file if names is empty)."""
    for c in candidates:
        if names:
            if all((c / n).is_file() for n in names):
                return c
        elif c.is_file():
            return c
    return None


def check_official_model_dir(path: str | os.PathLike, *, w2v_bert: str | os.PathLike | None = None,
                             semantic_codec: str | os.PathLike | None = None,
                             campplus: str | os.PathLike | None = None,
                             bigvgan: str | os.PathLike | None = None) -> dict[str, Path]:
    """Resolve every file an official model directory must hold; nothing is downloaded.

    Overrides: ``w2v_bert`` (a folder with config.json + model.safetensors), ``semantic_codec`` (a
    .safetensors file or a folder holding model.safetensors), ``campplus`` (the .bin file or its folder),
    ``bigvgan`` (a folder with config.json + bigvgan_generator.pt).

    Returns {"config", "gpt", "s2mel", "bpe_model", "w2v_stats", "spk_matrix", "emo_matrix",
    "w2v_bert_config", "w2v_bert", "semantic_codec", "campplus", "bigvgan_config", "bigvgan"} -> path.
    Raises ModelDirectoryError listing every missing file and the places searched.
    """
    import yaml

    root = Path(path)
    if not root.is_dir():
        raise ModelDirectoryError(f"official model directory not found: {root}")
    missing: list[str] = []
    found: dict[str, Path] = {}
    cfg_path = root / "config.yaml"
    names = {"gpt": "gpt.pth", "s2mel": "s2mel.pth", "bpe_model": "bpe.model", "w2v_stats": "wav2vec2bert_stats.pt",
             "spk_matrix": "feat1.pt", "emo_matrix": "feat2.pt"}
    if cfg_path.is_file():
        found["config"] = cfg_path
        try:
            raw = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{cfg_path}: not valid YAML: {e}") from e
        if isinstance(raw, dict):
            for role, key in (("gpt", "gpt_checkpoint"), ("s2mel", "s2mel_checkpoint"), ("w2v_stats", "w2v_stat"),
                              ("spk_matrix", "spk_matrix"), ("emo_matrix", "emo_matrix")):
                if isinstance(raw.get(key), str) and raw[key].strip():
                    names[role] = raw[key].strip()
            bpe = (raw.get("dataset") or {}).get("bpe_model") if isinstance(raw.get("dataset"), dict) else None
            if isinstance(bpe, str) and bpe.strip():
                names["bpe_model"] = bpe.strip()
    else:
        missing.append(f"config.yaml (looked for {cfg_path})")
    for role, name in names.items():
        p = root / name
        if p.is_file():
            found[role] = p
        else:
            missing.append(f"{name} (looked for {p})")

    hf = root / "hf_cache"

    def folder(role: str, override, default: Path, repo: str, files: tuple[str, ...], what: str):
        cands = [Path(override)] if override is not None else [default, *_snapshots(hf, repo)]
        hit = _find(cands, files)
        if hit is None:
            where = ", ".join(str(c) for c in cands) or str(default)
            missing.append(f"{what}: {' + '.join(files)} (looked in {where})")
            return
        for f in files:
            found[f"{role}_config" if f == "config.json" else role] = hit / f

    def single(role: str, override, cands: list[Path], what: str, inner: str):
        if override is not None:
            o = Path(override)
            cands = [o / inner if o.is_dir() else o]
        hit = _find(cands, ())
        if hit is None:
            missing.append(f"{what} (looked for {', '.join(str(c) for c in cands)})")
        else:
            found[role] = hit

    folder("w2v_bert", w2v_bert, hf / "w2v-bert-2.0", W2V_BERT_REPO, ("config.json", "model.safetensors"),
           "w2v-BERT 2.0")
    codec_cands = [hf / "semantic_codec_model.safetensors", root / "semantic_codec" / "model.safetensors",
                   hf / "semantic_codec" / "model.safetensors"]
    codec_cands += [s / "semantic_codec" / "model.safetensors" for s in _snapshots(hf, SEMANTIC_CODEC_REPO)]
    single("semantic_codec", semantic_codec, codec_cands, "MaskGCT semantic codec", "model.safetensors")
    camp_cands = [hf / "campplus_cn_common.bin", *[s / "campplus_cn_common.bin" for s in _snapshots(hf, CAMPPLUS_REPO)]]
    single("campplus", campplus, camp_cands, "CAMPPlus campplus_cn_common.bin", "campplus_cn_common.bin")
    folder("bigvgan", bigvgan, hf / "bigvgan", BIGVGAN_REPO, ("config.json", "bigvgan_generator.pt"), "BigVGAN v2")
    if missing:
        raise ModelDirectoryError(
            f"official model directory {root} is incomplete ({len(missing)} missing; nothing is downloaded):\n  "
            + "\n  ".join(missing))
    return found


# ---------------------------------------------------------------------------------------------
# reading official files
# ---------------------------------------------------------------------------------------------
def _read_torch(path: Path):
    from indextts2_jax.convert.state_dict import load_torch_checkpoint

    STATS["torch_reads"] += 1
    return load_torch_checkpoint(path)


def _tensor(obj, path: Path, what: str) -> np.ndarray:
    from indextts2_jax.convert.state_dict import _to_numpy

    if not hasattr(obj, "shape"):
        raise CheckpointError(f"{path}: expected a single tensor ({what}), got {type(obj).__name__}")
    return np.asarray(_to_numpy(obj), np.float32)


def _campplus_from_shapes(sd: Mapping[str, Any], base: dict) -> dict:
    """CAMPPlus constructor kwargs read off the checkpoint's shapes (the official code hard-codes 80/192)."""
    out = dict(base)
    try:
        out["embedding_size"] = int(sd["xvector.dense.linear.weight"].shape[0])
        out["init_channels"] = int(sd["xvector.tdnn.linear.weight"].shape[0])
        growth = int(sd["xvector.block1.tdnnd1.cam_layer.linear_local.weight"].shape[0])
        out["growth_rate"] = growth
        out["bn_size"] = int(sd["xvector.block1.tdnnd1.linear1.weight"].shape[0]) // growth
    except KeyError as e:
        raise CheckpointError(f"campplus: checkpoint lacks {e} (not a CAMPPlus state dict?)") from None
    return out


def _convert(name: str, path: Path, fn, *args, **kw):
    """Run one component's from_torch; any mismatch becomes a CheckpointError naming the component."""
    try:
        out = fn(*args, **kw)
    except ConfigError:
        raise
    except (CheckpointError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{name} ({path}) does not match the config: {e}") from e
    STATS["conversions"] += 1
    return out


def convert_official_model_dir(path: str | os.PathLike, **overrides) -> ModelAssets:
    """Read and convert every component of an official directory (needs torch); no caching."""
    from indextts2_jax.convert.state_dict import load_safetensors
    from indextts2_jax.models import bigvgan, campplus, gpt, s2mel, semantic_codec, w2v_bert
    files = check_official_model_dir(path, **overrides)
    config = _resolve_config(files)

    params: dict[str, Any] = {}
    camp_sd = _read_torch(files["campplus"])
    if isinstance(camp_sd, Mapping) and "state_dict" in camp_sd and isinstance(camp_sd["state_dict"], Mapping):
        camp_sd = camp_sd["state_dict"]
    config.aux.campplus.update(_campplus_from_shapes(camp_sd, config.aux.campplus.to_dict()))
    cc = component_configs(config)

    params["gpt"] = _convert("gpt", files["gpt"], gpt.from_torch, _read_torch(files["gpt"]), cc["gpt"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # extra s2mel entries (training leftovers) are reported by from_torch
        params["s2mel"] = _convert("s2mel", files["s2mel"], s2mel.from_torch, _read_torch(files["s2mel"]),
                                   cc["s2mel"])
    params["semantic_codec"] = _convert("semantic_codec", files["semantic_codec"], semantic_codec.from_torch,
                                        load_safetensors(files["semantic_codec"]), cc["semantic_codec"])
    w2v_cfg = cc["w2v_bert"]
    params["w2v_bert"] = _convert("w2v_bert", files["w2v_bert"], w2v_bert.from_torch,
                                  load_safetensors(files["w2v_bert"]), w2v_cfg,
                                  num_layers=w2v_cfg.layers_for_embedding, ignore_unused_layers=True)
    params["campplus"] = _convert("campplus", files["campplus"], campplus.from_torch, camp_sd, cc["campplus"])
    params["bigvgan"] = _convert("bigvgan", files["bigvgan"], bigvgan.from_torch, _read_torch(files["bigvgan"]),
                                 cc["bigvgan"])

    stats = _read_torch(files["w2v_stats"])
    if not isinstance(stats, Mapping) or "mean" not in stats or "var" not in stats:
        raise CheckpointError(f"{files['w2v_stats']}: expected a dict with 'mean' and 'var'")
    w2v_stats = {k: _tensor(stats[k], files["w2v_stats"], k).reshape(-1) for k in ("mean", "var")}
    spk = _tensor(_read_torch(files["spk_matrix"]), files["spk_matrix"], "spk_matrix")
    emo = _tensor(_read_torch(files["emo_matrix"]), files["emo_matrix"], "emo_matrix")
    _check_tables(config, cc, w2v_stats, spk, emo, str(path))
    found = emotion_text_dir(config, Path(path).resolve())
    return ModelAssets(config=config, params=params, w2v_stats=w2v_stats, spk_matrix=spk, emo_matrix=emo,
                       bpe_model=files["bpe_model"].read_bytes(), source=f"official:{Path(path).resolve()}",
                       extra={"emotion_text_dir": found} if found else {})


def _resolve_config(files: dict[str, Path]) -> ml_collections.ConfigDict:
    """load_official_config, with the aux kwargs updated from the resolved w2v-BERT/BigVGAN config.json."""
    from indextts2_jax.official_config import load_official_config

    config = load_official_config(files["config"])
    for role, section in (("w2v_bert_config", "w2v_bert"), ("bigvgan_config", "bigvgan")):
        try:
            h = json.loads(files[role].read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{files[role]}: not valid JSON: {e}") from e
        sec = config.aux[section]
        sec.update({k: h[k] for k in sec.keys() if k in h})
    return config


def _check_tables(config, cc, w2v_stats, spk, emo, where: str) -> None:
    n_rows = int(sum(config.model.emo_num))
    hidden = cc["w2v_bert"].hidden_size
    for k, v in w2v_stats.items():
        if v.shape != (hidden,):
            raise CheckpointError(f"{where}: w2v stats {k} has shape {v.shape}, expected ({hidden},)")
    if spk.shape != (n_rows, cc["campplus"].embedding_size):
        raise CheckpointError(f"{where}: spk_matrix shape {spk.shape}, expected ({n_rows}, "
                              f"{cc['campplus'].embedding_size}) (sum(emo_num), CAMPPlus embedding size)")
    if emo.shape != (n_rows, cc["gpt"].model_dim):
        raise CheckpointError(f"{where}: emo_matrix shape {emo.shape}, expected ({n_rows}, {cc['gpt'].model_dim})")


# ---------------------------------------------------------------------------------------------
# params files (flax msgpack), shared with indextts2_jax.export
# ---------------------------------------------------------------------------------------------
def _plain_tree(tree) -> dict:
    if isinstance(tree, Mapping):
        return {str(k): _plain_tree(v) for k, v in tree.items()}
    return np.asarray(tree)


def write_params(tree: Mapping, path: Path) -> None:
    from flax import serialization

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(serialization.msgpack_serialize(_plain_tree(tree)))
    os.replace(tmp, path)


def read_params(path: Path, what: str) -> dict:
    from flax import serialization

    try:
        return serialization.msgpack_restore(Path(path).read_bytes())
    except FileNotFoundError:
        raise
    except Exception as e:  # msgpack raises a handful of types on truncated/garbled data
        raise CheckpointError(f"{what}: cannot read params file {path}: {e}") from e


def tree_stats(tree) -> tuple[int, int, str]:
    """(parameter count, bytes, dtypes) of a params tree."""
    import jax

    leaves = jax.tree.leaves(tree)
    dtypes = sorted({str(np.asarray(x).dtype) for x in leaves})
    return (int(sum(np.size(x) for x in leaves)), int(sum(np.asarray(x).nbytes for x in leaves)), "/".join(dtypes))


def cast_params(tree, dtype) -> Any:
    """Floating leaves to ``dtype``; CAMPPlus ``batch_stats`` and the DiT ``freqs`` tables stay float32."""
    import jax

    if dtype is None:
        return tree
    dt = np.dtype(dtype) if not isinstance(dtype, str) or dtype != "bfloat16" else _bf16()

    def cast(path, x):
        names = [getattr(k, "key", str(k)) for k in path]
        x = np.asarray(x)
        if x.dtype.kind != "f" and str(x.dtype) != "bfloat16":
            return x
        if "batch_stats" in names or names[-1] == "freqs":
            return x.astype(np.float32)
        return x.astype(dt)

    return jax.tree_util.tree_map_with_path(cast, tree)


def _bf16():
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


ARRAY_FILES = {"w2v_stats_mean": "w2v_stats_mean.npy", "w2v_stats_var": "w2v_stats_var.npy",
               "spk_matrix": "spk_matrix.npy", "emo_matrix": "emo_matrix.npy", "bpe_model": "bpe.model"}


def write_arrays(assets: ModelAssets, out: Path) -> dict[str, str]:
    """The non-param files (stats, matrices, bpe.model); returns role -> file name.

    Tables the assets lack (``w2v_stats`` of a stacked-mel model, ``spk_matrix``/``emo_matrix`` of a model
    without emotion matrices) are not written and not listed."""
    files = {}

    def npy(role, value):
        if value is not None:
            files[role] = ARRAY_FILES[role]
            np.save(out / files[role], np.asarray(value, np.float32))

    stats = assets.w2v_stats or {}
    npy("w2v_stats_mean", stats.get("mean"))
    npy("w2v_stats_var", stats.get("var"))
    npy("spk_matrix", assets.spk_matrix)
    npy("emo_matrix", assets.emo_matrix)
    files["bpe_model"] = ARRAY_FILES["bpe_model"]
    (out / files["bpe_model"]).write_bytes(assets.bpe_model)
    return files


def read_arrays(root: Path, files: Mapping[str, str]) -> dict[str, Any]:
    """The tables listed in ``files`` (role -> file name); unlisted optional tables come back as None."""

    def npy(role):
        if role not in files:
            return None
        p = root / files[role]
        try:
            return np.load(p, allow_pickle=False)
        except FileNotFoundError:
            raise
        except Exception as e:
            raise CheckpointError(f"cannot read {p}: {e}") from e

    mean, var = npy("w2v_stats_mean"), npy("w2v_stats_var")
    return {"w2v_stats": None if mean is None or var is None else {"mean": mean, "var": var},
            "spk_matrix": npy("spk_matrix"), "emo_matrix": npy("emo_matrix"),
            "bpe_model": (root / files["bpe_model"]).read_bytes()}


# ---------------------------------------------------------------------------------------------
# converted checkpoints
# ---------------------------------------------------------------------------------------------
EMOTION_TEXT_DIR = "emotion_text"  # a checkpoint's or a bundle's copy of the text-to-emotion model folder


def copy_emotion_text_folder(src: str | os.PathLike, out: Path) -> list[str]:
    """Copy the text-to-emotion model folder ``src`` (its top-level files: config.json, tokenizer and generation
    files, safetensors) to ``out / EMOTION_TEXT_DIR``; returns the copied paths relative to ``out``."""
    src = Path(src)
    if not (src / "config.json").is_file():
        raise ModelDirectoryError(f"emotion model folder {src}: no config.json (not a Qwen3 model folder)")
    dst = out / EMOTION_TEXT_DIR
    dst.mkdir(parents=True, exist_ok=True)
    rels = []
    for f in sorted(src.iterdir()):
        if f.is_file() and not f.name.startswith("."):
            shutil.copyfile(f, dst / f.name)
            rels.append(f"{EMOTION_TEXT_DIR}/{f.name}")
    return rels


def save_converted(assets: ModelAssets, out_dir: str | os.PathLike, *, fingerprint: str = "",
                   emotion_text: bool = False) -> Path:
    """Write ``assets`` as a converted checkpoint (see module docstring); returns the folder. ``emotion_text``:
    also copy the text-to-emotion folder the assets name (``extra["emotion_text_dir"]``), if any, so that the
    checkpoint stands alone (the conversion cache inside an official directory does not: it has the original)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    comps = {}
    for name in COMPONENTS:
        if name not in assets.params:
            continue
        rel = f"params/{name}.msgpack"
        write_params(assets.params[name], out / rel)
        n, nbytes, dtypes = tree_stats(assets.params[name])
        comps[name] = {"file": rel, "num_params": n, "bytes": nbytes, "dtype": dtypes}
    files = write_arrays(assets, out)
    meta = {"format": CONVERTED_FORMAT, "version": CONVERTED_VERSION, "config": _config_to_json(assets.config),
            "components": comps, "files": files, "source": assets.source, "fingerprint": fingerprint}
    if emotion_text and assets.extra.get("emotion_text_dir"):
        copy_emotion_text_folder(assets.extra["emotion_text_dir"], out)
        meta["emotion_text"] = EMOTION_TEXT_DIR
    tmp = out / "converted.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, out / "converted.json")  # written last: its presence marks a complete checkpoint
    return out


def selected_components(listed: Mapping[str, Any], components, where: str, config=None) -> dict[str, Any]:
    """The entries of ``listed`` (component name -> file entry) that ``components`` names (None: all).

    ``components``: names, or a function of the model's ``config`` giving them (what a job needs can depend on
    the config, e.g. its semantic front end). A loader reads only these files, so a job that needs a few
    components (audio to codes, preprocessing) holds no other weights. A name that ``listed`` lacks raises
    MissingComponentsError naming ``where``."""
    if components is None:
        return dict(listed)
    wanted = set(components(config) if callable(components) else components)
    missing = sorted(wanted - set(listed))
    if missing:
        raise MissingComponentsError(f"{where} lacks the components {missing} (it has {sorted(listed)})")
    return {name: entry for name, entry in listed.items() if name in wanted}


def load_converted(out_dir: str | os.PathLike, dtype=None, components=None) -> ModelAssets:
    """Read a converted checkpoint (no torch). ``dtype`` casts the params (see :func:`cast_params`);
    ``components`` (names of ``COMPONENTS``; None: all) reads only those params."""
    root = Path(out_dir)
    meta_path = root / "converted.json"
    if not meta_path.is_file():
        raise ModelDirectoryError(f"{root} is not a converted checkpoint (no converted.json)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != CONVERTED_FORMAT or int(meta.get("version", 0)) > CONVERTED_VERSION:
        raise CheckpointError(f"{meta_path}: format {meta.get('format')!r} version {meta.get('version')} "
                              f"is not a {CONVERTED_FORMAT} v{CONVERTED_VERSION} checkpoint")
    params = {name: cast_params(read_params(root / c["file"], f"{name}"), dtype)
              for name, c in selected_components(meta["components"], components, str(root), meta["config"]).items()}
    arrays = read_arrays(root, meta["files"])
    extra = {"fingerprint": meta.get("fingerprint", "")}
    if meta.get("emotion_text"):
        extra["emotion_text_dir"] = str(root / meta["emotion_text"])
    return ModelAssets(config=ml_collections.ConfigDict(meta["config"]), params=params, source=f"converted:{root}",
                       extra=extra, **arrays)


# ---------------------------------------------------------------------------------------------
# the cached loader
# ---------------------------------------------------------------------------------------------
def fingerprint_files(files: Mapping[str, Path], extra: Any = None) -> str:
    """sha256 over (role, file name, size, mtime_ns) of each file plus ``extra`` (JSON-able)."""
    items = []
    for role in sorted(files):
        st = os.stat(files[role])
        items.append([role, os.path.basename(files[role]), st.st_size, st.st_mtime_ns])
    blob = json.dumps({"cache_version": CACHE_VERSION, "files": items, "extra": extra}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def emotion_text_dir(config: ml_collections.ConfigDict, root: str | os.PathLike) -> str | None:
    """The text-to-emotion folder an official directory names (config.yaml ``qwen_emo_path``, relative to
    ``root``) if it holds a config.json; else None (the model then synthesizes without text-to-emotion)."""
    name = config.model.get("qwen_emo_path") if "model" in config else None
    if not isinstance(name, str) or not name.strip():
        return None
    folder = Path(root) / name.strip()
    return str(folder) if (folder / "config.json").is_file() else None


def load_official_model_dir(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None, dtype=None, *,
                            use_cache: bool = True, w2v_bert=None, semantic_codec=None, campplus=None,
                            bigvgan=None, components=None) -> ModelAssets:
    """An official IndexTTS-2 directory as :class:`ModelAssets` (params in our format).

    The first call converts (needs torch) and saves the result under ``cache_dir`` (default
    ``<path>/jax_cache``) keyed by a fingerprint of the source files (size + mtime) and the config
    yaml; later calls with unchanged files read that cache without torch. Older cache entries of the
    same directory are removed. ``dtype`` (e.g. "bfloat16") casts the returned params (the cache is
    float32). ``w2v_bert``/``semantic_codec``/``campplus``/``bigvgan`` override the auxiliary paths
    (see :func:`check_official_model_dir`). A checkpoint that does not fit the config raises
    CheckpointError naming the component. ``extra["emotion_text_dir"]``: see :func:`emotion_text_dir` (the
    text-to-emotion model is read from its own folder when first used, not converted here). ``components``
    (None: all) keeps only those params (a cached conversion reads only their files).
    """
    assets = _load_official_model_dir(path, cache_dir, dtype, use_cache=use_cache, w2v_bert=w2v_bert,
                                      semantic_codec=semantic_codec, campplus=campplus, bigvgan=bigvgan,
                                      components=components)
    found = emotion_text_dir(assets.config, Path(path).resolve())
    if found is not None:
        assets.extra["emotion_text_dir"] = found
    return assets


def _load_official_model_dir(path, cache_dir, dtype, *, use_cache, w2v_bert, semantic_codec, campplus,
                             bigvgan, components) -> ModelAssets:
    overrides = dict(w2v_bert=w2v_bert, semantic_codec=semantic_codec, campplus=campplus, bigvgan=bigvgan)
    files = check_official_model_dir(path, **overrides)
    root = Path(path).resolve()
    if not use_cache:
        return _cast_assets(convert_official_model_dir(path, **overrides), dtype, components)
    cache_root = Path(cache_dir) if cache_dir is not None else root / "jax_cache"
    fp = fingerprint_files(files, {"config_sha256": hashlib.sha256(files["config"].read_bytes()).hexdigest()})
    entry = cache_root / fp[:24]
    if (entry / "converted.json").is_file():
        try:
            assets = load_converted(entry, components=components)
        except MissingComponentsError:  # the model lacks them (asked of the cache, not a fault of it)
            raise
        except (CheckpointError, OSError, ValueError) as e:
            warnings.warn(f"ignoring unreadable conversion cache {entry}: {e}", stacklevel=2)
        else:
            if assets.extra.get("fingerprint") == fp:
                STATS["cache_hits"] += 1
                assets.source = f"official:{root} (cache {entry})"
                return _cast_assets(assets, dtype)
    assets = convert_official_model_dir(path, **overrides)
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache_root))
    try:
        save_converted(assets, tmp, fingerprint=fp)
        if entry.exists():
            shutil.rmtree(entry, ignore_errors=True)
        try:
            os.replace(tmp, entry)
        except OSError:
            if not (entry / "converted.json").is_file():  # not just another process that finished first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _drop_stale_entries(cache_root, keep=entry, source=assets.source)
    return _cast_assets(assets, dtype, components)


def _drop_stale_entries(cache_root: Path, keep: Path, source: str) -> None:
    for d in cache_root.iterdir():
        if d == keep or not (d / "converted.json").is_file():
            continue
        try:
            meta = json.loads((d / "converted.json").read_text())
        except (OSError, ValueError):
            continue
        if meta.get("format") == CONVERTED_FORMAT and meta.get("source") == source:
            shutil.rmtree(d, ignore_errors=True)


def _cast_assets(assets: ModelAssets, dtype, components=None) -> ModelAssets:
    """``assets`` keeping only ``components`` (None: all; see :func:`selected_components`), cast to ``dtype``."""
    kept = selected_components(assets.params, components, assets.source or "the model", assets.config)
    assets.params = {k: v if dtype is None else cast_params(v, dtype) for k, v in kept.items()}
    return assets


def load_assets(path: str | os.PathLike, dtype=None, components=None, **kwargs) -> ModelAssets:
    """ModelAssets from whatever ``path`` is: an inference bundle (bundle.json), a converted checkpoint
    (converted.json) or an official model directory (config.yaml; converted once and cached, ``kwargs`` go
    to :func:`load_official_model_dir`). ``dtype`` casts the params (bundles keep their stored dtype if None).
    ``components`` (names of ``COMPONENTS``, or a function of the config giving them; None: all) reads only
    those params; the config, the tokenizer and the small tables (w2v-BERT statistics, emotion matrices)
    always come along.
    """
    root = Path(path)
    if (root / "bundle.json").is_file():
        from indextts2_jax.export import load_bundle

        return _cast_assets(load_bundle(root, components=components), dtype)
    if (root / "converted.json").is_file():
        return load_converted(root, dtype, components)
    if (root / "config.yaml").is_file():
        return load_official_model_dir(root, dtype=dtype, components=components, **kwargs)
    raise ModelDirectoryError(f"{root}: not an inference bundle (bundle.json), a converted checkpoint "
                              "(converted.json) or an official model directory (config.yaml)")


def summarize(assets: ModelAssets) -> list[dict]:
    """Per component: name, parameter count, bytes, dtypes (for the CLIs)."""
    rows = []
    for name in COMPONENTS:
        if name in assets.params:
            n, nbytes, dtypes = tree_stats(assets.params[name])
            rows.append({"component": name, "params": n, "bytes": nbytes, "dtype": dtypes})
    return rows


def format_summary(rows: list[dict], seconds: float | None = None) -> str:
    lines = [f"{'component':<16}{'params':>14}{'MiB':>10}  dtype"]
    for r in rows:
        lines.append(f"{r['component']:<16}{r['params']:>14,}{r['bytes'] / 2**20:>10.1f}  {r['dtype']}")
    total_p, total_b = sum(r["params"] for r in rows), sum(r["bytes"] for r in rows)
    lines.append(f"{'total':<16}{total_p:>14,}{total_b / 2**20:>10.1f}")
    if seconds is not None:
        lines.append(f"took {seconds:.1f} s")
    return "\n".join(lines)


__all__ = ["STATS", "cast_params", "check_official_model_dir", "component_configs", "convert_official_model_dir",
           "format_summary", "load_assets", "load_converted", "load_official_model_dir", "save_converted", "summarize"]
