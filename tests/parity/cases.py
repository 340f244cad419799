"""Discovery and loading of the official reference fixtures (shared/fixtures).

Fixtures live at ``$INDEXTTS2_FIXTURES``, else ``../shared/fixtures`` relative to the repo root.
``cases(component)`` returns one ``pytest.param`` per ``<component>/<case>.npz`` with the id
``component/case``. A missing component folder yields one param that skips with a reason, or
fails when ``CI=true`` (CI must never skip parity).

Tolerance convention: ``max_rel_err(actual, expected) = max|a - e| / max|e|``, the largest
absolute error relative to the reference's scale. Elementwise relative error is meaningless near
zero crossings; scaling by the largest reference magnitude is what "max relative error" means in
these tests.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def fixtures_root() -> Path:
    env = os.environ.get("INDEXTTS2_FIXTURES")
    return Path(env) if env else (REPO_ROOT.parent / "shared" / "fixtures")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@dataclass
class Case:
    """One fixture case: ``params`` holds the ``param/`` tensors (official state-dict keys)."""

    component: str
    name: str
    meta: dict
    params: dict[str, np.ndarray]
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]

    @property
    def config(self) -> dict:
        return self.meta["config"]

    @property
    def id(self) -> str:
        return f"{self.component}/{self.name}"


def load_case(path: Path) -> Case:
    path = Path(path)
    meta = json.loads(path.with_suffix(".json").read_text())
    params, inputs, outputs = {}, {}, {}
    with np.load(path, allow_pickle=False) as z:
        for key in z.files:
            kind, _, name = key.partition("/")
            {"param": params, "in": inputs, "out": outputs}[kind][name] = z[key]
    return Case(path.parent.name, path.stem, meta, params, inputs, outputs)


def cases(component: str) -> list:
    """pytest params (one per case file) for ``component``; see the module docstring."""
    folder = fixtures_root() / component
    files = sorted(folder.glob("*.npz")) if folder.is_dir() else []
    if not files:
        return [pytest.param(str(folder), id=f"{component}/MISSING")]
    return [pytest.param(str(f), id=f"{component}/{f.stem}") for f in files]


def get_case(path: str) -> Case:
    """Load a case given a param from :func:`cases`; skip (or fail in CI) if it is missing."""
    p = Path(path)
    if p.suffix != ".npz" or not p.exists():
        msg = f"reference fixtures not found at {p} (set INDEXTTS2_FIXTURES or put shared/ beside the repo)"
        if in_ci():
            pytest.fail("CI=true: " + msg)
        pytest.skip(msg)
    return load_case(p)


def max_rel_err(actual, expected) -> float:
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"shape {a.shape} != expected {e.shape}"
    scale = np.max(np.abs(e)) if e.size else 0.0
    return float(np.max(np.abs(a - e)) / max(scale, 1e-30)) if e.size else 0.0


def assert_close(actual, expected, tol: float, what: str = "") -> None:
    err = max_rel_err(actual, expected)
    assert err <= tol, f"{what}: max relative error {err:.3e} > tolerance {tol:.1e}"
