"""Files that are never half-written and never silently corrupt.

Every file a run writes goes through :func:`write_atomic` (a temporary file beside the
target, flushed to disk, then renamed over it), so a kill at any moment leaves either the
old file or the new one. Torch files (checkpoints, weights) also carry the SHA-256 of
their content (:func:`content_digest`), written by :func:`save_torch` and checked by
:func:`load_torch`: a file with flipped bytes is refused by name instead of resuming with
garbage. Loading is always ``weights_only=True``: a file that would need to run code to
load is refused.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

DIGEST_KEY = "sha256"


class CorruptFileError(ValueError):
    """A file is unreadable, truncated, altered since it was written, or unsafe to load."""


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, sync it, then rename it into
    place; on any failure the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise OSError(err.errno, f"cannot write {path} ({err.strerror or err})") from err
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):  # a full disk, a vanished folder: say which file
            raise OSError(err.errno, f"cannot write {path} ({err.strerror or err})") from err
        raise


def make_folder(path: str | Path, option: str = "--output") -> Path:
    """Create the folder ``path`` (and its parents) for a run's files; a path that is a
    file, or a place that cannot be written, is refused naming ``option``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(
            f"{option} {path} is a file, not a folder: choose another {option}"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(
            err.errno,
            f"{option} {path} cannot be created ({err.strerror or err}): choose a "
            f"writable place for {option}",
        ) from err
    return path


def remove_stray_temporaries(folder: str | Path) -> list[Path]:
    """Delete the ``.NAME.*.tmp`` files a killed :func:`write_atomic` left in ``folder``."""
    stray = sorted(Path(folder).glob(".*.tmp")) if Path(folder).is_dir() else []
    for tmp in stray:
        tmp.unlink(missing_ok=True)
    return stray


def content_digest(obj: Any) -> str:
    """SHA-256 of a nested structure of dicts, lists, tensors, arrays and plain values:
    its keys, types, shapes and every byte of its tensors, in order."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"tensor {t.dtype} {tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, np.ndarray):
        h.update(f"array {obj.dtype} {obj.shape};".encode())
        h.update(np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, dict):
        h.update(f"dict {len(obj)}{{".encode())
        for key, value in obj.items():
            _feed(h, key)
            _feed(h, value)
        h.update(b"}")
    elif isinstance(obj, list | tuple):
        h.update(f"{type(obj).__name__} {len(obj)}[".encode())
        for value in obj:
            _feed(h, value)
        h.update(b"]")
    else:
        h.update(f"{type(obj).__name__} {obj!r};".encode())


def save_torch(path: str | Path, payload: dict[str, Any]) -> None:
    """``torch.save`` ``payload`` with its :func:`content_digest` added, atomically."""
    buffer = io.BytesIO()
    torch.save({**payload, DIGEST_KEY: content_digest(payload)}, buffer)
    write_atomic(path, buffer.getvalue())


def load_torch(path: str | Path, what: str = "file") -> Any:
    """``torch.load`` ``path`` onto the CPU with ``weights_only=True``; a dict that carries
    a digest must match it. Every failure is a :class:`CorruptFileError` naming the file
    (``what`` says what it should have been: "checkpoint", "weights file")."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        if isinstance(err, pickle.UnpicklingError):  # garbage and unsafe pickles alike
            raise CorruptFileError(
                f"{what} {path} cannot be loaded safely: it is corrupt or truncated, or it "
                "holds Python objects other than tensors and plain data, which sketchenv "
                "does not load (they could run code); re-save it as a plain state dict "
                "(torch.save(model.state_dict(), path))"
            ) from err
        reason = str(err).splitlines()[0] if str(err) else ""
        raise CorruptFileError(
            f"{what} {path} is not readable (corrupt or truncated, or not a torch file?): "
            f"{type(err).__name__}: {reason}"
        ) from err
    if isinstance(payload, dict) and DIGEST_KEY in payload:
        recorded = payload.pop(DIGEST_KEY)
        if recorded != content_digest(payload):
            raise CorruptFileError(
                f"{what} {path} was altered or damaged after it was written: its content no "
                "longer matches the SHA-256 recorded in it; use another copy, or delete it"
            )
    return payload
