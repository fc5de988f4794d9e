"""Atomic checkpoint and weight files for training runs.

Every file is written to a temporary file in the destination's folder, flushed and fsynced, then renamed over the
destination with `os.replace` (atomic on POSIX and Windows), and the folder is fsynced so the rename survives a
power cut. A process killed mid-write therefore leaves the previous file intact and at worst a stray
``.tmp-*`` file, which the next successful write of the same file does not depend on.

Checkpoints hold only tensors, ints, floats, strings, bools, None, lists and dicts, so they load with
``torch.load(..., weights_only=True)`` and never execute pickled code. Best-model weights go to
``best.safetensors`` when the `safetensors` package is installed, otherwise to ``best.pt`` (a plain state dict).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import torch

from rankstack.errors import RankstackError

try:
    from safetensors.torch import load_file as _safetensors_load
    from safetensors.torch import save as _safetensors_save
except ImportError:
    _safetensors_load = None
    _safetensors_save = None

CHECKPOINT_NAME = "checkpoint.pt"


def _fsync_dir(directory: Path) -> None:
    # Directories cannot be opened for fsync on Windows; there the rename is already durable enough.
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Call `write(f)` on a temporary file next to `path`, fsync it, and rename it over `path`.

    If `write` raises, the temporary file is removed, `path` is untouched and the exception propagates.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_name = target.parent / f".tmp-{target.name}.{os.getpid()}.{secrets.token_hex(4)}"
    # os.open rather than tempfile.mkstemp: mkstemp forces mode 0600, this honours the umask like open() does.
    fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(target.parent)
    return target


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Atomically `torch.save` a checkpoint dict to `path`."""
    return atomic_write(path, lambda f: torch.save(dict(state), f))


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint` with ``weights_only=True``."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise RankstackError(
            f"The checkpoint {path} could not be read ({exc}); delete it to start the run afresh or point the "
            "trainer at another run folder."
        ) from exc


def save_json(obj: Any, path: str | os.PathLike[str]) -> Path:
    """Atomically write `obj` as indented JSON."""
    data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
    return atomic_write(path, lambda f: f.write(data))


def best_weights_path(run_dir: str | os.PathLike[str]) -> Path:
    """Where the best model's weights go in `run_dir`: ``best.safetensors`` if safetensors is installed, else
    ``best.pt``."""
    return Path(run_dir) / ("best.safetensors" if _safetensors_save is not None else "best.pt")


def save_weights(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike[str]) -> Path:
    """Atomically write a model state dict; safetensors format if `path` ends in ``.safetensors``."""
    # Cloning to CPU breaks storage sharing (tied weights), which safetensors refuses to serialise.
    tensors = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in state_dict.items()}
    if Path(path).suffix == ".safetensors":
        if _safetensors_save is None:
            raise RankstackError(
                f"Cannot write {path}: the safetensors package is not installed; install it with "
                "`pip install safetensors` or save to a .pt path."
            )
        data = _safetensors_save(tensors)
        return atomic_write(path, lambda f: f.write(data))
    return atomic_write(path, lambda f: torch.save(tensors, f))


def load_weights(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load a state dict written by `save_weights` (safetensors or a torch file loaded with weights_only)."""
    if Path(path).suffix == ".safetensors":
        if _safetensors_load is None:
            raise RankstackError(
                f"Cannot read {path}: the safetensors package is not installed; install it with "
                "`pip install safetensors`."
            )
        return _safetensors_load(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)
