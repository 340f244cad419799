"""Inference bundles: everything synthesis needs in one folder, checked by hash, loadable without torch.

``export_bundle(assets, out_dir, dtype)`` writes::

    bundle.json            format/version, config (model, aux, inference), param dtype, components
                           (file, parameter count, bytes, dtypes), the other files by role, every file's
                           sha256 and size, and the exported functions (below)
    params/<component>.msgpack   flax msgpack params tree per component (``dtype``; bfloat16 bundles keep
                           CAMPPlus BatchNorm statistics and the DiT ``freqs`` table in float32)
    w2v_stats_mean.npy, w2v_stats_var.npy, spk_matrix.npy, emo_matrix.npy, bpe.model
    functions/<name>.jaxexport   with ``serialize_functions=True``
    emotion_text/          the text-to-emotion model folder (HF Qwen3 files as they were), when the assets
                           name one (an official directory's ``qwen_emo_path``) or ``emotion_text=<folder>``

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

From training workdirs (:func:`assets_from_workdirs`, :func:`export_workdirs`; ``experiments.export --workdir``):
the latest checkpoint of each stage (codec, gpt, s2mel, vocoder) becomes the same bundle format, with the
merged config (``inference.semantic_features`` says which semantic front-end the stages were trained on;
the demo's stacked-mel bundles hold no w2v-BERT params/stats and no emotion matrices).

Pad inputs to a bucket's frame count (mel frames past the utterance are ignored by the estimator via
``x_lens``; BigVGAN output past ``frames * hop`` of the real mel is to be cut). Call one with
``bundle_function(assets, name)(params, *inputs)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from indextts2_jax.convert.official import (
    EMOTION_TEXT_DIR,
    _config_to_json,
    cast_params,
    copy_emotion_text_folder,
    read_arrays,
    read_params,
    selected_components,
    tree_stats,
    write_arrays,
    write_params,
)
from indextts2_jax.errors import CheckpointError, ConfigError, ModelDirectoryError
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
                  platforms: tuple[str, ...] | None = None, overwrite: bool = True,
                  emotion_text: bool | str | os.PathLike | None = None) -> Path:
    """Write an inference bundle of ``assets`` (see module docstring); returns the folder.

    dtype: "float32" or "bfloat16" (params stored in that dtype). serialize_functions: also write the
    ``jax.export`` functions for ``buckets`` (default ``DEFAULT_BUCKETS``: component -> frame counts).
    emotion_text: the text-to-emotion model folder to include (hashed like every file): None = the one the
    assets name (``extra["emotion_text_dir"]``) if any, False = none, a path = that folder.
    """
    if emotion_text is None:
        emotion_text = assets.extra.get("emotion_text_dir") or False
    if emotion_text is True:
        raise ValueError("emotion_text: give a folder, None (the assets' own) or False")
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
    if emotion_text:
        rels += copy_emotion_text_folder(emotion_text, out)
    hashes = {rel: {"sha256": sha256_file(out / rel), "bytes": (out / rel).stat().st_size} for rel in rels}
    meta = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "dtype": dtype,
            "config": _config_to_json(assets.config), "components": comps, "files": files, "functions": functions,
            "sha256": hashes, "source": assets.source, "emotion_text": EMOTION_TEXT_DIR if emotion_text else None}
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


def load_bundle(path: str | os.PathLike, verify: bool = True, components=None) -> ModelAssets:
    """Read an inference bundle (no torch, no training code). ``verify`` checks sizes and hashes first (of
    every file); ``components`` (None: all) reads only those params.

    ``assets.extra``: ``dtype`` (the param dtype), ``functions`` (name -> spec from bundle.json),
    ``bundle_dir`` and, if the bundle has one, ``emotion_text_dir``; exported functions are deserialized on demand
    by :func:`bundle_function`.
    """
    root = Path(path)
    if verify:
        meta = verify_bundle(root)
    else:
        meta = json.loads((root / "bundle.json").read_text())
    listed = selected_components(meta["components"], components, f"inference bundle {root}", meta["config"])
    try:
        params = {name: read_params(root / c["file"], f"bundle component {name}") for name, c in listed.items()}
        arrays = read_arrays(root, meta["files"])
    except (CheckpointError, FileNotFoundError) as e:
        raise BundleError(f"inference bundle {root}: {e}") from e
    extra: dict[str, Any] = {"dtype": meta["dtype"], "functions": meta.get("functions", {}), "bundle_dir": str(root)}
    if meta.get("emotion_text"):
        extra["emotion_text_dir"] = str(root / meta["emotion_text"])
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


# ---------------------------------------------------------------------------------------------
# training workdirs -> ModelAssets
# ---------------------------------------------------------------------------------------------
STAGES = ("codec", "gpt", "s2mel", "vocoder")
STAGE_COMPONENTS = {"codec": "semantic_codec", "gpt": "gpt", "s2mel": "s2mel (+ campplus)", "vocoder": "bigvgan"}


class WorkdirExportError(ConfigError):
    """Training workdirs that cannot become a bundle: a stage missing or untrained, or stage configs that disagree."""


def _checkpoint_steps(workdir: Path) -> list[int]:
    """Finished checkpoint steps of a trainer workdir (``checkpoints/<step>/``; Orbax temp folders excluded)."""
    root = workdir / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def find_stage_workdirs(paths) -> tuple[dict[str, Path], list[str]]:
    """Which stage each training workdir in ``paths`` trained: ``({stage: workdir}, problems)``.

    A path is a stage workdir (its ``config.json``, written by the trainer, names the ``stage``) or a recipe
    root holding ``<stage>/`` or ``stages/<stage>/`` workdirs (``run_demo_stages``, ``experiments.demo``).
    """
    found: dict[str, Path] = {}
    problems: list[str] = []

    def add(stage: str, wd: Path):
        if stage in found and found[stage].resolve() != wd.resolve():
            problems.append(f"two {stage} workdirs: {found[stage]} and {wd}")
        else:
            found[stage] = wd

    for path in [Path(p) for p in paths]:
        cfg = path / "config.json"
        if cfg.is_file():
            try:
                stage = json.loads(cfg.read_text()).get("stage")
            except (OSError, ValueError) as e:
                problems.append(f"{cfg}: unreadable ({e})")
                continue
            if stage not in STAGES:
                problems.append(f"{cfg}: stage {stage!r} is not one of {STAGES}")
            else:
                add(stage, path)
            continue
        hits = [(stage, d) for stage in STAGES for d in (path / stage, path / "stages" / stage)
                if (d / "config.json").is_file()]
        if not hits:
            problems.append(f"{path}: neither a training workdir (config.json) nor a recipe root holding "
                            f"{'/, '.join(STAGES)}/ (or stages/<stage>/) workdirs")
        for stage, d in hits:
            add(stage, d)
    return found, problems


def _section(config, dotted: str):
    node = config
    for key in dotted.split("."):
        if node is None or key not in node:
            return None
        node = node[key]
    return node.to_dict() if hasattr(node, "to_dict") else node


def _json_equal(a, b) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _stage_params(workdir: Path) -> tuple[int, Any]:
    from indextts2_jax.train.tasks.codec import latest_params

    return latest_params(workdir)


def _select(params: Mapping, keys: tuple[str, ...], drop: tuple[str, ...], what: str) -> dict:
    """``params`` restricted to ``keys`` after dropping the training-only ``drop`` entries (strict otherwise)."""
    extra = sorted(set(params) - set(keys) - set(drop))
    if extra:
        raise WorkdirExportError(f"{what}: unexpected top-level params {extra} (expected {list(keys)})")
    return {k: params[k] for k in keys if k in params}


def assets_from_workdirs(paths, *, bpe_model: str | os.PathLike | None = None, campplus: Mapping | None = None,
                         base: ModelAssets | str | os.PathLike | None = None) -> ModelAssets:
    """:class:`ModelAssets` from the training workdirs of the four stages (their latest checkpoints).

    Args:
      paths: stage workdirs and/or recipe roots (see :func:`find_stage_workdirs`); every stage of
        :data:`STAGES` must be found, each with a checkpoint.
      bpe_model: the SentencePiece model; default ``config.data.bpe_model`` or ``config.model.dataset.bpe_model``
        of the GPT stage (a path as given, else relative to the workdir or the recipe root).
      campplus: CAMPPlus ``{"params", "batch_stats"}`` for the style vectors; default the demo S2M stage's frozen
        seeded CAMPPlus (``indextts2_jax.train.tasks.s2mel.demo_campplus_params`` of the s2mel stage's config), or
        with the w2v-BERT front-end the ``base`` model's pretrained CAMPPlus.
      base: what training does not produce, for stages trained on real w2v-BERT features (required then): a
        converted official checkpoint, an official model directory or a bundle (or its ModelAssets). Gives the
        w2v-BERT params and statistics, the CAMPPlus, and the emotion matrices (feat1/feat2) when their shapes fit
        the trained GPT and CAMPPlus.

    Components: ``semantic_codec`` (the codec stage, decoder included), ``gpt`` (UnifiedVoice; the stage-2
    ``speaker_classifier`` dropped), ``s2mel`` (length regulator, gpt_layer, DiT; an S2M stage trained without a
    GPT, ``s2mel.gpt_checkpoint`` empty, learned on the code embeddings alone, so its untrained ``gpt_layer``
    gets a zero last layer: ``gpt_layer(latent) = 0`` at synthesis too), ``bigvgan`` (the vocoder
    stage's ``generator``, weight norm folded; the discriminators dropped), ``campplus``. The config
    (``model``/``aux``/``inference``/``extensions``, see ``indextts2_jax.infer.configs``): each section from the
    stage that trained it; ``inference.semantic_features`` from the stages' ``demo.semantic_features`` (the
    stacked-mel front-end needs no w2v-BERT params or stats); no emotion matrices.

    Raises :class:`WorkdirExportError` listing every problem found before anything is restored: stages not
    found, workdirs without a checkpoint, no BPE model, and stage configs that disagree (the GPT or S2M trained
    against another codec, the S2M's GPT width, the vocoder's mel settings, the front-end); a params tree that
    does not fit the merged config raises ``CheckpointError`` naming the component.
    """
    import ml_collections as mlc

    from indextts2_jax.convert.state_dict import check_params_match
    from indextts2_jax.infer.configs import component_configs, semantic_front_end

    found, problems = find_stage_workdirs(paths)
    looked = ", ".join(str(p) for p in paths)
    configs: dict[str, Any] = {}
    for stage in STAGES:
        wd = found.get(stage)
        if wd is None:
            problems.append(f"{stage} stage ({STAGE_COMPONENTS[stage]}): no training workdir found "
                            f"(looked in {looked})")
            continue
        try:
            configs[stage] = mlc.ConfigDict(json.loads((wd / "config.json").read_text()))
        except (OSError, ValueError) as e:
            problems.append(f"{stage}: {wd / 'config.json'} unreadable ({e})")
            continue
        if not _checkpoint_steps(wd):
            problems.append(f"{stage} stage: {wd} has no checkpoint ({wd / 'checkpoints'}/<step>/ missing; not "
                            "trained yet?)")
    # the stages' configs must agree on what they share
    checks = [
        ("model.semantic_codec", "codec", ("gpt", "s2mel"), "trained against another codec"),
        ("model.gpt.model_dim", "gpt", ("s2mel",), "the S2M gpt_layer reads the GPT latent of this width"),
        ("model.s2mel.preprocess_params", "s2mel", ("vocoder",), "the vocoder reads the S2M mel"),
    ]
    for dotted, owner, users, why in checks:
        if owner not in configs:
            continue
        want = _section(configs[owner], dotted)
        for user in users:
            if user in configs and not _json_equal(_section(configs[user], dotted), want):
                problems.append(f"{user} stage config disagrees with the {owner} stage on {dotted} ({why}): "
                                f"{_section(configs[user], dotted)} vs {want}")
    gpt_ckpt = str(_section(configs["s2mel"], "s2mel.gpt_checkpoint") or "") if "s2mel" in configs else ""
    if gpt_ckpt and "gpt" in found and Path(gpt_ckpt).is_dir() and \
            Path(gpt_ckpt).resolve() != found["gpt"].resolve():
        problems.append(f"the s2mel stage was trained on the latent of the GPT in {gpt_ckpt} "
                        f"(s2mel.gpt_checkpoint), not the gpt stage exported here ({found['gpt']})")
    fronts = {}
    for stage in ("codec", "gpt", "s2mel"):
        if stage in configs:
            try:
                fronts[stage] = semantic_front_end(configs[stage])
            except ConfigError as e:
                problems.append(f"{stage}: {e}")
    if len(set(fronts.values())) > 1:
        problems.append(f"the stages read different semantic features: {fronts}")
    if "w2v_bert" in fronts.values() and base is None:
        problems.append("the stages were trained on w2v-BERT features: the bundle needs the w2v-BERT 2.0 params and "
                        "statistics and the pretrained CAMPPlus, which training does not produce; pass base= (--base: "
                        "a converted official checkpoint, an official model directory or a bundle)")
    bpe_path = None
    if bpe_model is not None:
        bpe_path = Path(bpe_model)
        if not bpe_path.is_file():
            problems.append(f"bpe_model {bpe_path} not found")
    elif "gpt" in configs:
        names = [n for n in (_section(configs["gpt"], "data.bpe_model"),
                             _section(configs["gpt"], "model.dataset.bpe_model")) if n]
        bases = [Path("."), found["gpt"], *[Path(p) for p in paths], found["gpt"].parent, found["gpt"].parent.parent]
        cands = [b / n for n in names for b in bases]
        bpe_path = next((c for c in cands if c.is_file()), None)
        if bpe_path is None:
            problems.append(f"no BPE model: the gpt stage config names {names or 'none'} (looked for "
                            f"{', '.join(str(c) for c in cands) or 'config.data.bpe_model'}); pass bpe_model")
    if problems:
        raise WorkdirExportError(f"cannot export the training workdirs ({len(problems)} problems):\n  "
                                 + "\n  ".join(problems))

    gpt_cfg, s2_cfg, voc_cfg = configs["gpt"], configs["s2mel"], configs["vocoder"]
    front = next(iter(fronts.values()))
    if base is not None and not isinstance(base, ModelAssets):
        from indextts2_jax.convert.official import load_assets

        base = load_assets(base)
    config = mlc.ConfigDict()
    config.model = mlc.ConfigDict(gpt_cfg.model.to_dict())
    config.model.semantic_codec = configs["codec"].model.semantic_codec.to_dict()
    config.model.s2mel = s2_cfg.model.s2mel.to_dict()
    config.model.dataset.bpe_model = "bpe.model"
    config.aux = mlc.ConfigDict({"w2v_bert": gpt_cfg.aux.w2v_bert.to_dict(), "campplus": s2_cfg.aux.campplus.to_dict(),
                                 "bigvgan": voc_cfg.aux.bigvgan.to_dict()})
    from_base = front == "w2v_bert"  # w2v-BERT and the pretrained CAMPPlus come from the base model
    if from_base:
        config.aux.w2v_bert = base.config.aux.w2v_bert.to_dict()
        if campplus is None:
            config.aux.campplus = base.config.aux.campplus.to_dict()
    config.inference = mlc.ConfigDict(gpt_cfg.inference.to_dict())
    config.inference.semantic_features = front
    ext = {"condition_input_size": int(_section(gpt_cfg, "gpt.condition_input_size") or 1024),
           "emotion_dim": int(_section(gpt_cfg, "gpt.emotion_dim") or 1024),
           "duration_control": bool(_section(gpt_cfg, "gpt.duration_control") or False)}
    config.extensions = mlc.ConfigDict({"gpt": ext})
    cc = component_configs(config)
    if front == "mel":
        cc.check_front_end()
    voc, mel = cc.bigvgan, cc.mel
    if (voc.num_mels, voc.hop_length, voc.sampling_rate) != (mel.num_mels, mel.hop_size, mel.sampling_rate):
        raise WorkdirExportError(f"the vocoder (aux.bigvgan: {voc.num_mels} mels, hop {voc.hop_length}, "
                                 f"{voc.sampling_rate} Hz) does not fit the S2M mel ({mel.num_mels} mels, hop "
                                 f"{mel.hop_size}, {mel.sampling_rate} Hz)")
    if cc.codec.codebook_size > cc.gpt.start_mel_token:
        raise WorkdirExportError(f"the codec's {cc.codec.codebook_size} codes overlap the GPT's start/stop mel tokens "
                                 f"({cc.gpt.start_mel_token}, {cc.gpt.stop_mel_token})")

    import jax

    from indextts2_jax.models import bigvgan as bigvgan_lib
    from indextts2_jax.models import campplus as campplus_lib
    from indextts2_jax.models import gpt as gpt_lib
    from indextts2_jax.models import s2mel as s2mel_lib
    from indextts2_jax.models import semantic_codec as codec_lib

    key = jax.random.PRNGKey(0)
    params: dict[str, Any] = {}
    steps: dict[str, int] = {}
    steps["codec"], tree = _stage_params(found["codec"])
    params["semantic_codec"] = dict(tree)
    check_params_match(params["semantic_codec"], jax.eval_shape(lambda k: codec_lib.init_params(cc.codec, k), key),
                       f"codec stage params ({found['codec']})")
    steps["gpt"], tree = _stage_params(found["gpt"])
    params["gpt"] = {k: v for k, v in tree.items() if k != "speaker_classifier"}  # stage 2's GRL classifier
    check_params_match(params["gpt"], gpt_lib.abstract_params(cc.gpt), f"gpt stage params ({found['gpt']})")
    steps["s2mel"], tree = _stage_params(found["s2mel"])
    params["s2mel"] = _select(tree, ("length_regulator", "gpt_layer", "estimator"), (), "s2mel stage")
    check_params_match(params["s2mel"], s2mel_lib.abstract_params(cc.s2mel), f"s2mel stage params ({found['s2mel']})")
    s2mel_without_latent = "s2mel" in s2_cfg and not gpt_ckpt
    if s2mel_without_latent:  # content = code embeddings alone, as trained: gpt_layer(latent) := 0
        last = f"layers_{len(cc.s2mel.gpt_layer_dims) - 1}"
        layer = params["s2mel"]["gpt_layer"][last]
        params["s2mel"]["gpt_layer"] = dict(params["s2mel"]["gpt_layer"])
        params["s2mel"]["gpt_layer"][last] = {k: np.zeros_like(np.asarray(v)) for k, v in layer.items()}
    steps["vocoder"], tree = _stage_params(found["vocoder"])
    if "generator" not in tree:
        raise WorkdirExportError(f"vocoder stage ({found['vocoder']}): no 'generator' params "
                                 f"(top level: {sorted(tree)})")
    gen = tree["generator"]
    if any(getattr(k, "key", None) == "gain" for path, _ in jax.tree_util.tree_leaves_with_path(gen) for k in path):
        gen = bigvgan_lib.remove_weight_norm(gen)
    params["bigvgan"] = gen
    check_params_match(params["bigvgan"], bigvgan_lib.abstract_params(cc.bigvgan),
                       f"vocoder stage generator params ({found['vocoder']})")
    if campplus is None and from_base:
        campplus = base.params["campplus"]
    elif campplus is None:
        try:
            from indextts2_jax.train.tasks.s2mel import demo_campplus_params
        except ImportError as e:
            raise WorkdirExportError("the style CAMPPlus of the demo S2M stage comes from "
                                     "indextts2_jax.train.tasks.s2mel.demo_campplus_params, which is not available "
                                     f"({e}); pass campplus=") from e
        campplus = demo_campplus_params(s2_cfg)
    params["campplus"] = {"params": campplus["params"], "batch_stats": campplus["batch_stats"]}
    check_params_match(params["campplus"], campplus_lib.abstract_variables(cc.campplus), "campplus")

    from indextts2_jax.text.tokenizer import TextTokenizer

    bpe = bpe_path.read_bytes()
    vocab = TextTokenizer(bpe).vocab_size
    if vocab > cc.gpt.number_text_tokens:
        raise WorkdirExportError(f"BPE model {bpe_path} has {vocab} pieces, more than the GPT's "
                                 f"number_text_tokens={cc.gpt.number_text_tokens}")
    w2v_stats = spk = emo = None
    if from_base:
        if "w2v_bert" not in base.params or base.w2v_stats is None:
            raise WorkdirExportError(f"base model {base.source} has no w2v-BERT params/statistics")
        params["w2v_bert"] = base.params["w2v_bert"]
        w2v_stats = base.w2v_stats
        if np.shape(w2v_stats["mean"]) != (cc.codec.hidden_size,):
            raise WorkdirExportError(f"base w2v-BERT statistics are {np.shape(w2v_stats['mean'])}-d; the trained codec "
                                     f"reads {cc.codec.hidden_size}-d features")
    if base is not None and base.spk_matrix is not None and base.emo_matrix is not None:
        rows = int(sum(config.model.emo_num))
        if np.shape(base.spk_matrix) == (rows, cc.campplus.embedding_size) and \
                np.shape(base.emo_matrix) == (rows, cc.gpt.model_dim):
            spk, emo = base.spk_matrix, base.emo_matrix
    source = "workdirs:" + ", ".join(f"{s}={found[s].resolve()}@{steps[s]}" for s in STAGES)
    if base is not None:
        source += f"; base {base.source}"
    return ModelAssets(config=config, params=params, w2v_stats=w2v_stats, spk_matrix=spk, emo_matrix=emo, bpe_model=bpe,
                       source=source, extra={"steps": steps, "workdirs": {s: str(found[s]) for s in STAGES},
                                             "s2mel_gpt_latent": not s2mel_without_latent})


def export_workdirs(paths, out_dir: str | os.PathLike, *, bpe_model=None, campplus=None, base=None,
                    **bundle_kw) -> Path:
    """:func:`assets_from_workdirs` then :func:`export_bundle` (``bundle_kw``: dtype, serialize_functions, ...)."""
    return export_bundle(assets_from_workdirs(paths, bpe_model=bpe_model, campplus=campplus, base=base), out_dir,
                         **bundle_kw)


__all__ = ["BundleError", "DEFAULT_BUCKETS", "STAGES", "WorkdirExportError", "assets_from_workdirs", "bundle_function",
           "export_bundle", "export_workdirs", "find_stage_workdirs", "load_bundle", "load_exported", "verify_bundle"]
