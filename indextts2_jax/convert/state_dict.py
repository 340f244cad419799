"""Strict, layout-aware access to PyTorch state dicts (as NumPy arrays).

Every converter (``models/*.from_torch``) reads keys through a :class:`StateDict`, which records
what was consumed. ``StateDict.finish()`` then raises :class:`CheckpointError` listing every key
that was neither consumed nor explicitly ignored, and :func:`check_params_match` compares the
produced params tree with the model's expected (abstract) params, listing missing, unexpected and
mis-shaped entries. Together they make conversion strict in both directions.

Layout rules (PyTorch -> Flax, channels-last):
  nn.Linear.weight (out, in)            -> Dense kernel (in, out)
  HF Conv1D.weight (in, out)            -> Dense kernel (in, out)  (no transpose)
  nn.Conv1d.weight (out, in/g, k)       -> Conv kernel (k, in/g, out)
  nn.Conv2d.weight (out, in/g, kh, kw)  -> Conv kernel (kh, kw, in/g, out)
  nn.ConvTranspose1d.weight (in, out, k) -> kept as (in, out, k) helpers below give (k, in, out)
  weight norm (weight_g, weight_v)      -> w = g * v / ||v||, norm over all dims but dim 0
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from indextts2_jax.errors import CheckpointError


def fold_weight_norm(weight_g: np.ndarray, weight_v: np.ndarray) -> np.ndarray:
    """``g * v / ||v||`` with the norm over every dim except dim 0 (torch ``weight_norm(dim=0)``).

    Computed in float64, returned in ``weight_v``'s dtype (float32 for checkpoints).
    """
    v = np.asarray(weight_v, dtype=np.float64)
    g = np.asarray(weight_g, dtype=np.float64)
    axes = tuple(range(1, v.ndim))
    norm = np.sqrt(np.sum(v * v, axis=axes, keepdims=True))
    return (g.reshape(norm.shape) * v / norm).astype(np.asarray(weight_v).dtype)


class StateDict:
    """A view of a flat ``{key: array}`` dict under ``prefix`` that records consumed keys.

    Views made with :meth:`sub` share the record with their parent, so one ``finish()`` on the
    root checks the whole checkpoint.
    """

    def __init__(self, tensors: Mapping[str, Any], prefix: str = "", _shared=None):
        if _shared is None:
            arrays = {k: _to_numpy(v) for k, v in tensors.items()}
            _shared = {"arrays": arrays, "used": set(), "ignored": []}
        self._s = _shared
        self.prefix = prefix

    # -- navigation -------------------------------------------------------------------------
    def sub(self, name: str | int) -> "StateDict":
        """A view under ``prefix + name + '.'``."""
        return StateDict({}, f"{self.prefix}{name}.", self._s)

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def has(self, name: str) -> bool:
        return self.key(name) in self._s["arrays"]

    def keys(self) -> list[str]:
        """Keys under this view's prefix, without the prefix."""
        n = len(self.prefix)
        return [k[n:] for k in self._s["arrays"] if k.startswith(self.prefix)]

    # -- reading ----------------------------------------------------------------------------
    def take(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """The array at ``prefix + name``, marked consumed; optional shape check."""
        full = self.key(name)
        arrays = self._s["arrays"]
        if full not in arrays:
            near = [k for k in arrays if k.startswith(self.prefix)][:8]
            raise CheckpointError(
                f"checkpoint has no key {full!r}" + (f" (keys under {self.prefix!r}: {near} ...)" if near else "")
            )
        self._s["used"].add(full)
        value = arrays[full]
        if shape is not None and tuple(value.shape) != tuple(shape):
            raise CheckpointError(f"{full}: shape {tuple(value.shape)}, expected {tuple(shape)}")
        return value

    def ignore(self, *patterns: str) -> None:
        """Mark keys under this prefix that match any regex (searched in the relative key) as unused on purpose."""
        for p in patterns:
            self._s["ignored"].append(re.compile(re.escape(self.prefix) + p))

    def weight(self, name: str = "weight") -> np.ndarray:
        """A weight that may be stored plain or as weight norm (``name_g``/``name_v``); folded if so."""
        if self.has(name + "_g") or self.has(name + "_v"):
            return fold_weight_norm(self.take(name + "_g"), self.take(name + "_v"))
        if self.has(f"parametrizations.{name}.original0"):
            return fold_weight_norm(
                self.take(f"parametrizations.{name}.original0"), self.take(f"parametrizations.{name}.original1")
            )
        return self.take(name)

    def optional_bias(self, bias: bool | None) -> dict:
        if bias is None:
            bias = self.has("bias")
        return {"bias": self.take("bias")} if bias else {}

    # -- layer helpers (return Flax param dicts) ---------------------------------------------
    def linear(self, bias: bool | None = None) -> dict:
        """nn.Linear (out, in) -> Dense {'kernel': (in, out), 'bias'}; bias=None: use it if present."""
        return {"kernel": np.ascontiguousarray(self.weight().T), **self.optional_bias(bias)}

    def conv1d_as_dense(self, bias: bool | None = None) -> dict:
        """A kernel-size-1 Conv1d (out, in, 1) -> Dense {'kernel': (in, out)}."""
        w = self.weight()
        if w.ndim != 3 or w.shape[-1] != 1:
            raise CheckpointError(f"{self.key('weight')}: expected a (out, in, 1) conv, got {w.shape}")
        return {"kernel": np.ascontiguousarray(w[:, :, 0].T), **self.optional_bias(bias)}

    def hf_conv1d(self, bias: bool = True) -> dict:
        """HF GPT-2 ``Conv1D`` (weight already (in, out)) -> Dense."""
        return {"kernel": self.take("weight"), **self.optional_bias(bias)}

    def conv1d(self, bias: bool | None = None) -> dict:
        """nn.Conv1d (out, in/g, k) -> nn.Conv {'kernel': (k, in/g, out)}."""
        return {"kernel": np.ascontiguousarray(self.weight().transpose(2, 1, 0)), **self.optional_bias(bias)}

    def conv2d(self, bias: bool | None = None) -> dict:
        """nn.Conv2d (out, in/g, kh, kw) -> nn.Conv {'kernel': (kh, kw, in/g, out)}."""
        return {"kernel": np.ascontiguousarray(self.weight().transpose(2, 3, 1, 0)), **self.optional_bias(bias)}

    def conv_transpose1d(self, bias: bool | None = None) -> dict:
        """nn.ConvTranspose1d (in, out, k) -> {'kernel': (k, in, out)} for a transposed conv that
        scatters input frame t to outputs t*stride + j with weight kernel[j] (no flip applied)."""
        return {"kernel": np.ascontiguousarray(self.weight().transpose(2, 0, 1)), **self.optional_bias(bias)}

    def layer_norm(self, weight: str = "weight", bias: str | None = "bias") -> dict:
        """LayerNorm/GroupNorm gain+bias -> {'scale', 'bias'}."""
        out = {"scale": self.take(weight)}
        if bias is not None:
            out["bias"] = self.take(bias)
        return out

    def embedding(self, name: str = "weight") -> dict:
        return {"embedding": self.take(name)}

    def batch_norm(self, affine: bool = True) -> tuple[dict, dict]:
        """BatchNorm -> (params {'scale','bias'}, batch_stats {'mean','var'}); ignores num_batches_tracked."""
        self.ignore(r"num_batches_tracked$")
        params = {"scale": self.take("weight"), "bias": self.take("bias")} if affine else {}
        stats = {"mean": self.take("running_mean"), "var": self.take("running_var")}
        return params, stats

    # -- checking ---------------------------------------------------------------------------
    def unused(self) -> list[str]:
        s = self._s
        return sorted(
            k for k in s["arrays"] if k not in s["used"] and not any(p.match(k) for p in s["ignored"])
        )

    def finish(self) -> None:
        """Raise CheckpointError if any key was neither consumed nor ignored."""
        left = self.unused()
        if left:
            shown = ", ".join(left[:40]) + (f" ... ({len(left)} in all)" if len(left) > 40 else "")
            raise CheckpointError(f"unexpected checkpoint keys (not used by this model/config): {shown}")


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        path = f"{prefix}/{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(_flatten(v, path))
        else:
            out[path] = v
    return out


def check_params_match(params: Mapping, expected: Mapping, what: str = "params") -> None:
    """Compare a params tree with the expected tree (arrays or ShapeDtypeStructs).

    Raises CheckpointError listing missing, unexpected and mis-shaped leaves.
    """
    got, want = _flatten(params), _flatten(expected)
    missing = sorted(set(want) - set(got))
    unexpected = sorted(set(got) - set(want))
    bad = [
        f"{k}: {tuple(np.shape(got[k]))} vs expected {tuple(want[k].shape)}"
        for k in sorted(set(got) & set(want))
        if tuple(np.shape(got[k])) != tuple(want[k].shape)
    ]
    if missing or unexpected or bad:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {missing[:30]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {unexpected[:30]}")
        if bad:
            parts.append(f"shape mismatches {len(bad)}: {bad[:30]}")
        raise CheckpointError(f"converted {what} do not match the model: " + "; ".join(parts))


def strip_prefix(tensors: Mapping[str, Any], prefixes: Iterable[str] = ("module.",)) -> dict[str, Any]:
    """Drop DataParallel-style prefixes from every key."""
    out = {}
    for k, v in tensors.items():
        for p in prefixes:
            if k.startswith(p):
                k = k[len(p):]
        out[k] = v
    return out


def load_torch_checkpoint(path: str | os.PathLike) -> dict:
    """Load a ``.pth``/``.pt``/``.bin`` file with torch (the ``convert`` extra) onto the CPU.

    Returns the unpickled object (usually a dict of tensors or a dict holding one).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"reading {path} needs torch: pip install -e '.[convert]' (on this machine: pip install torch==2.13.0)"
        ) from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load a ``.safetensors`` file to NumPy (no torch needed)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except Exception as e:
        raise CheckpointError(f"cannot read safetensors file {path}: {e}") from e
