"""Inference bundles: everything synthesis needs in one folder, checked by hash, loadable without torch.

``export_bundle(assets, out_dir, dtype)`` writes::

    bundle.json            format/version, config (model, aux, inference), param dtype, components
                           (file, parameter count, bytes, dtypes), the other files by role, every file's
                           sha256 and size, and the exported functions (below)
    params/<component>.msgpack   flax msgpack params tree per component (``dtype``; bfloat16 bundles keep
                           CAMPPlus BatchNorm statistics and the DiT ``freqs`` table in float32)
    w2v_stats_mean.npy, w2v_stats_var.npy, spk_matrix.npy, emo_matrix.npy, bpe.model
    functions/<name>.jaxexport   with ``serialize_functions=True``

``load_bundle(path)`` checks every file's size and sha256 before reading (a truncated or corrupt file
raises :class:`BundleError` naming it) and returns :class:`ModelAssets`. It imports neither torch nor
the training code (``indextts2_jax.train``).

Exported functions (``jax.export``, StableHLO, one fixed shape per bucket, params passed as the first
argument so the weights are not baked in; compute dtype = the bundle dtype; lowered for ``platforms``,
default the current backend):

* ``bigvgan_T<frames>``: ``(bigvgan params, mel (1, frames, num_mels) f32) -> wav (1, frames * hop) f32``,
  the BigVGAN v2 generator.
* ``s2mel_estimator_T<frames>``: ``(estimator params, x, prompt_x (2, frames, n_mels) f32, x_lens (2,) i32,
  t (2,) f32, style (2, style_dim) f32, cond (2, frames, content_dim) f32) -> velocity (2, frames, n_mels)
  f32``: one DiT evaluation on the classifier-free-guidance batch [cond; uncond] of one utterance
  (per-item reflect padding at ``x_lens``), i.e. one step of the CFM Euler sampler.

Pad inputs to a bucket's frame count (mel frames past the utterance are ignored by the estimator via
``x_lens``; BigVGAN output past ``frames * hop`` of the real mel is to be cut). Call one with
``bundle_function(assets, name)(params, *inputs)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from indextts2_jax.convert.official import (
    _config_to_json,
    cast_params,
    read_arrays,
    read_params,
    tree_stats,
    write_arrays,
    write_params,
)
from indextts2_jax.errors import CheckpointError, ModelDirectoryError
from indextts2_jax.infer.assets import COMPONENTS, ModelAssets

BUNDLE_FORMAT = "indextts2-jax-bundle"
BUNDLE_VERSION = 1
DTYPES = ("float32", "bfloat16")
DEFAULT_BUCKETS = {"bigvgan": (256, 1024), "s2mel_estimator": (256, 1024)}


class BundleError(CheckpointError):
    """An inference bundle is incomplete, truncated, corrupt or of an unknown format."""


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# exported functions
# ---------------------------------------------------------------------------------------------
def _avals(tree):
    import jax

    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), tree)


def _export_functions(assets: ModelAssets, params: dict, dtype: str, buckets: dict, platforms) -> dict[str, tuple]:
    """name -> (serialized bytes, spec dict)."""
    import jax
    import jax.numpy as jnp

    from indextts2_jax.convert.official import component_configs
    from indextts2_jax.models.bigvgan import BigVGAN
    from indextts2_jax.models.s2mel import DiT

    try:
        import flatbuffers  # noqa: F401  (jax.export serialization needs it)
    except ImportError as e:
        raise ImportError("serialize_functions needs the 'flatbuffers' package (jax.export serialization): "
                          "pip install flatbuffers") from e
    cc = component_configs(assets.config)
    compute = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
    out: dict[str, tuple] = {}
    f32 = jnp.float32
    kw = {} if platforms is None else {"platforms": tuple(platforms)}

    if "bigvgan" in params:
        bcfg = cc["bigvgan"]
        model = BigVGAN(bcfg, dtype=compute)

        def vocode(p, mel):
            return model.apply({"params": p}, mel)

        for frames in buckets.get("bigvgan", ()):
            mel = jax.ShapeDtypeStruct((1, int(frames), bcfg.num_mels), f32)
            exp = jax.export.export(jax.jit(vocode), **kw)(_avals(params["bigvgan"]), mel)
            out[f"bigvgan_T{int(frames)}"] = (exp.serialize(), {
                "component": "bigvgan", "frames": int(frames),
                "inputs": {"mel": [1, int(frames), bcfg.num_mels]},
                "outputs": {"wav": [1, int(frames) * bcfg.hop_length]}})

    if "s2mel" in params:
        scfg = cc["s2mel"]
        dit = DiT(scfg, dtype=compute)

        def estimator(p, x, prompt_x, x_lens, t, style, cond):
            return dit.apply({"params": p}, x, prompt_x, x_lens, t, style, cond, None, True).astype(f32)

        for frames in buckets.get("s2mel_estimator", ()):
            t_len, b = int(frames), 2
            mel = jax.ShapeDtypeStruct((b, t_len, scfg.n_mels), f32)
            args = (mel, mel, jax.ShapeDtypeStruct((b,), jnp.int32), jax.ShapeDtypeStruct((b,), f32),
                    jax.ShapeDtypeStruct((b, scfg.style_dim), f32),
                    jax.ShapeDtypeStruct((b, t_len, scfg.dit.content_dim), f32))
            exp = jax.export.export(jax.jit(estimator), **kw)(_avals(params["s2mel"]["estimator"]), *args)
            out[f"s2mel_estimator_T{t_len}"] = (exp.serialize(), {
                "component": "s2mel/estimator", "frames": t_len,
                "inputs": {"x": [b, t_len, scfg.n_mels], "prompt_x": [b, t_len, scfg.n_mels], "x_lens": [b],
                           "t": [b], "style": [b, scfg.style_dim], "cond": [b, t_len, scfg.dit.content_dim]},
                "outputs": {"velocity": [b, t_len, scfg.n_mels]}})
    return out


# ---------------------------------------------------------------------------------------------
# export / load
# ---------------------------------------------------------------------------------------------
def export_bundle(assets: ModelAssets, out_dir: str | os.PathLike, dtype: str = "float32",
                  serialize_functions: bool = False, buckets: dict[str, tuple[int, ...]] | None = None,
                  platforms: tuple[str, ...] | None = None, overwrite: bool = True) -> Path:
    """Write an inference bundle of ``assets`` (see module docstring); returns the folder.

    dtype: "float32" or "bfloat16" (params stored in that dtype). serialize_functions: also write the
    ``jax.export`` functions for ``buckets`` (default ``DEFAULT_BUCKETS``: component -> frame counts).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {DTYPES}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty")
        if not (out / "bundle.json").is_file():
            raise FileExistsError(f"{out} is not empty and not a bundle; refusing to overwrite it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    params = {name: cast_params(assets.params[name], dtype) for name in COMPONENTS if name in assets.params}
    comps = {}
    for name, tree in params.items():
        rel = f"params/{name}.msgpack"
        write_params(tree, out / rel)
        n, nbytes, dtypes = tree_stats(tree)
        comps[name] = {"file": rel, "num_params": n, "bytes": nbytes, "dtype": dtypes}
    files = write_arrays(assets, out)
    functions = {}
    if serialize_functions:
        (out / "functions").mkdir(exist_ok=True)
        for name, (blob, spec) in _export_functions(assets, params, dtype, buckets or DEFAULT_BUCKETS,
                                                   platforms).items():
            rel = f"functions/{name}.jaxexport"
            (out / rel).write_bytes(bytes(blob))
            functions[name] = {"file": rel, **spec}
    rels = [c["file"] for c in comps.values()] + list(files.values()) + [f["file"] for f in functions.values()]
    hashes = {rel: {"sha256": sha256_file(out / rel), "bytes": (out / rel).stat().st_size} for rel in rels}
    meta = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "dtype": dtype,
            "config": _config_to_json(assets.config), "components": comps, "files": files, "functions": functions,
            "sha256": hashes, "source": assets.source}
    tmp = out / "bundle.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, out / "bundle.json")
    return out


def verify_bundle(path: str | os.PathLike) -> dict:
    """Check bundle.json and every file's size and sha256; returns the parsed bundle.json."""
    root = Path(path)
    meta_path = root / "bundle.json"
    if not meta_path.is_file():
        raise ModelDirectoryError(f"{root} is not an inference bundle (no bundle.json)")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise BundleError(f"{meta_path}: unreadable ({e})") from e
    if meta.get("format") != BUNDLE_FORMAT or int(meta.get("version", 0)) > BUNDLE_VERSION:
        raise BundleError(f"{meta_path}: format {meta.get('format')!r} v{meta.get('version')} is not "
                          f"{BUNDLE_FORMAT} v{BUNDLE_VERSION}")
    listed = {c["file"] for c in meta["components"].values()} | set(meta["files"].values())
    listed |= {f["file"] for f in meta.get("functions", {}).values()}
    unhashed = sorted(listed - set(meta["sha256"]))
    if unhashed:
        raise BundleError(f"{meta_path}: files without a recorded sha256: {unhashed}")
    problems = []
    for rel, want in meta["sha256"].items():
        p = root / rel
        if not p.is_file():
            problems.append(f"{rel}: missing")
            continue
        size = p.stat().st_size
        if size != want["bytes"]:
            problems.append(f"{rel}: {size} bytes, expected {want['bytes']} (truncated or replaced)")
        elif sha256_file(p) != want["sha256"]:
            problems.append(f"{rel}: sha256 mismatch (corrupt)")
    if problems:
        raise BundleError(f"inference bundle {root} failed its integrity check: " + "; ".join(problems))
    return meta


def load_bundle(path: str | os.PathLike, verify: bool = True) -> ModelAssets:
    """Read an inference bundle (no torch, no training code). ``verify`` checks sizes and hashes first.

    ``assets.extra``: ``dtype`` (the param dtype), ``functions`` (name -> spec from bundle.json) and
    ``bundle_dir``; exported functions are deserialized on demand by :func:`bundle_function`.
    """
    root = Path(path)
    if verify:
        meta = verify_bundle(root)
    else:
        meta = json.loads((root / "bundle.json").read_text())
    try:
        params = {name: read_params(root / c["file"], f"bundle component {name}")
                  for name, c in meta["components"].items()}
        arrays = read_arrays(root, meta["files"])
    except (CheckpointError, FileNotFoundError) as e:
        raise BundleError(f"inference bundle {root}: {e}") from e
    extra: dict[str, Any] = {"dtype": meta["dtype"], "functions": meta.get("functions", {}), "bundle_dir": str(root)}
    return ModelAssets(config=ml_collections.ConfigDict(meta["config"]), params=params, source=f"bundle:{root}",
                       extra=extra, **arrays)


def load_exported(assets: ModelAssets, name: str):
    """The ``jax.export.Exported`` function ``name`` of a bundle loaded with :func:`load_bundle`."""
    import jax

    specs = assets.extra.get("functions", {})
    if name not in specs:
        raise KeyError(f"bundle has no exported function {name!r}; it has {sorted(specs)}")
    blob = (Path(assets.extra["bundle_dir"]) / specs[name]["file"]).read_bytes()
    return jax.export.deserialize(bytearray(blob))


def bundle_function(assets: ModelAssets, name: str):
    """A callable ``(params, *inputs) -> outputs`` for the exported function ``name``."""
    return load_exported(assets, name).call


__all__ = ["BundleError", "DEFAULT_BUCKETS", "bundle_function", "export_bundle", "load_bundle", "load_exported",
           "verify_bundle"]
