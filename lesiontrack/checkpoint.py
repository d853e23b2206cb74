"""Pretraining checkpoints: the one reader and writer of ``checkpoint_{best,latest}.pt``.

A checkpoint is a ``torch.save`` of plain types only (tensors, dicts, lists, tuples, text,
numbers, None). It is read with torch's weights-only unpickler, which builds those types and
nothing else: a checkpoint whose pickle names any other callable (``os.system``, a class of some
package) is refused before that callable is looked up, so a downloaded or shared checkpoint can
hold weights, never code. Checkpoints written before the state was made plain hold numpy scalars
in their training log; exactly the numpy types that rebuild a scalar from its bytes are allowed.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lesiontrack.io import InputError, atomic_path
from lesiontrack.model import NORMS

# what checkpoints written before save_checkpoint made the state plain hold besides plain types:
# numpy scalars in the training log (numpy's scalar constructor from a dtype and raw bytes, and the
# dtype classes) and torch.__version__ (a str subclass); none of them calls anything the file names
_NUMPY_SCALARS: list[Any] = [np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.float32)),
                             type(np.dtype(np.int64)), type(np.dtype(np.int32)), type(np.dtype(np.bool_))]
try:  # numpy >= 2 (numpy._core) and the name numpy 1.x wrote (numpy.core), which numpy 2 still reads
    from numpy._core.multiarray import scalar as _scalar
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import scalar as _scalar
_NUMPY_SCALARS.append(_scalar)
_EARLIER: list[Any] = [*_NUMPY_SCALARS, torch.torch_version.TorchVersion]

MODEL_KEYS = {"width": int, "embedding_dim": int}


def plain(value: Any) -> Any:
    """``value`` with numpy scalars and arrays made Python numbers and lists (tensors kept), so
    that the weights-only reader needs no numpy type."""
    if isinstance(value, dict):
        return type(value)((k, plain(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str):  # torch.__version__ is a str subclass
        return str(value)
    return value


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` atomically, its numpy values made plain first."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(plain(state), tmp)
    return path


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The state of a pretraining checkpoint, read with the weights-only unpickler (no code from
    the file runs); :class:`InputError` naming the file for a missing, damaged, code-carrying or
    foreign file, or one without a model and its config."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such checkpoint")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a checkpoint file")
    try:
        with torch.serialization.safe_globals(_EARLIER):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds on a damaged file (zip, pickle, EOF, runtime)
        text = str(err).strip()
        if "weights_only" in text or "Unsupported global" in text or "Unsupported operand" in text:
            names = [line.split("GLOBAL", 1)[1].split()[0] for line in text.splitlines() if "GLOBAL" in line]
            what = f" names {names[0]}" if names else " holds objects other than weights"
            raise InputError(f"{path}: refused: the checkpoint's pickle{what}; a lesiontrack checkpoint holds only "
                             "weights and plain values, and nothing in it was run") from None
        first = text.splitlines()[0] if text else "empty"
        raise InputError(f"{path}: not a readable checkpoint ({type(err).__name__}: {first})") from None
    check_state(state, path)
    return state


def check_state(state: Any, path: str | os.PathLike) -> None:
    """Stop where ``state`` is not a pretraining checkpoint: no model weights, no model config, or
    a model config whose sizes are not positive whole numbers."""
    if not isinstance(state, dict):
        raise InputError(f"{path}: not a lesiontrack pretraining checkpoint (a {type(state).__name__}, not a dict)")
    missing = [key for key in ("model", "config") if key not in state]
    if missing:
        raise InputError(f"{path}: not a lesiontrack pretraining checkpoint: no {' and no '.join(missing)} "
                         f"(keys {sorted(map(str, state))[:6]})")
    model = state["config"].get("model") if isinstance(state["config"], dict) else None
    if not isinstance(model, dict):
        raise InputError(f"{path}: not a lesiontrack pretraining checkpoint: its config has no model settings")
    for key, kind in MODEL_KEYS.items():
        value = model.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) or value <= 0:
            raise InputError(f"{path}: config.model.{key} = {value!r}: expected a positive whole number")
    n_scales = model.get("n_scales", 5)
    if not isinstance(n_scales, int) or not 1 <= n_scales <= 5:
        raise InputError(f"{path}: config.model.n_scales = {n_scales!r}: expected 1 to 5")
    norm = model.get("norm", "group")
    if norm not in NORMS:
        raise InputError(f"{path}: config.model.norm = {norm!r}: not one of {list(NORMS)}")
    spacing = state["config"].get("spacing_mm")
    if spacing is not None and not (isinstance(spacing, (int, float)) and math.isfinite(spacing) and spacing > 0):
        raise InputError(f"{path}: config.spacing_mm = {spacing!r}: expected a positive number")


def load_weights(model: torch.nn.Module, state: dict[str, Any], path: str | os.PathLike, key: str = "model") -> None:
    """``model.load_state_dict(state[key])``, or one line naming the file where the weights are of
    another architecture (missing, unexpected or differently shaped tensors)."""
    try:
        model.load_state_dict(state[key])
    except (RuntimeError, TypeError, AttributeError, ValueError) as err:
        detail = " ".join(str(err).split())
        raise InputError(f"{path}: its {key} weights do not fit the network its config describes "
                         f"({detail[:240]}{'...' if len(detail) > 240 else ''})") from None
