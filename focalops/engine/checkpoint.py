"""Checkpoints that are safe to open and refuse to load when corrupted.

A checkpoint is a ``torch.save`` file holding only tensors and plain Python values (dicts,
lists, tuples, str, int, float, bool, None), so it opens with ``torch.load(weights_only=True)``:
opening one never runs code from the file. It carries ``"sha256"``, a SHA-256 digest of its
content (every tensor's dtype, shape and bytes, every value and key, in order), written on save
and checked on load: torch's zip reader does not check CRCs, so without it a file with flipped
bytes would load. Saving is atomic and durable: write ``<path>.tmp``, fsync it, rename it over
``<path>``, fsync the folder; a stale ``<path>.tmp`` left by an interrupted save is removed.
"""

import hashlib
import os
import pickle
import struct
from typing import Any, Dict, Tuple

import torch
from torch import Tensor

from focalops.errors import CheckpointError, one_line

FORMAT = "focalops-checkpoint"
VERSION = 1
REQUIRED = ("model", "config", "iteration")


def content_digest(state: Dict[str, Any]) -> str:
    """SHA-256 (hex) of ``state``'s content, its ``"sha256"`` entry left out.

    Raises:
        TypeError: a value other than a tensor or a plain Python value (naming where it is).
    """
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != "sha256"}, "checkpoint")
    return h.hexdigest()


def _feed(h, value: Any, where: str) -> None:
    # Each value is tagged with its type and length, so different structures never hash alike.
    if isinstance(value, Tensor):
        if value.layout != torch.strided:
            raise TypeError(f"{where}: only strided tensors can be saved, got {value.layout}")
        t = value.detach().cpu().contiguous()
        h.update(b"T" + str(t.dtype).encode() + struct.pack(f"<{t.dim() + 1}q", t.dim(), *t.shape))
        h.update(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
    elif isinstance(value, dict):
        h.update(b"D" + struct.pack("<q", len(value)))
        for k, v in value.items():
            _feed(h, k, where)
            _feed(h, v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        h.update((b"L" if isinstance(value, list) else b"U") + struct.pack("<q", len(value)))
        for i, v in enumerate(value):
            _feed(h, v, f"{where}[{i}]")
    elif isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        h.update(b"S" + struct.pack("<q", len(data)) + data)
    elif isinstance(value, bool) or value is None:
        h.update(b"N" if value is None else (b"B1" if value else b"B0"))
    elif isinstance(value, int):
        data = str(value).encode()
        h.update(b"I" + struct.pack("<q", len(data)) + data)
    elif isinstance(value, float):
        h.update(b"F" + struct.pack("<d", value))
    else:
        raise TypeError(f"{where}: a checkpoint holds only tensors and plain values, got {type(value).__name__}")


def save_checkpoint(path: str, state: Dict[str, Any]) -> None:
    """Writes ``state`` (tensors and plain values; must include ``"model"``, ``"config"``,
    ``"iteration"``) atomically, with its format tag and content digest.

    Raises:
        TypeError: ``state`` holds another kind of value (it would not open with ``weights_only``).
        OSError: the file cannot be written (the previous checkpoint at ``path`` stays intact).
    """
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise ValueError(f"save_checkpoint: state lacks {missing}")
    payload = {"format": FORMAT, "version": VERSION, **{k: v for k, v in state.items() if k != "sha256"}}
    payload["sha256"] = content_digest(payload)
    tmp = path + ".tmp"
    if os.path.exists(tmp):
        os.remove(tmp)  # a stale temporary from an interrupted save
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    if os.name == "posix":  # make the rename itself durable
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_temporary(path: str) -> bool:
    """Removes ``<path>.tmp`` left by a save that was killed; True if there was one."""
    if os.path.exists(path + ".tmp"):
        os.remove(path + ".tmp")
        return True
    return False


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Opens a checkpoint written by :func:`save_checkpoint` (with ``weights_only=True``, on CPU)
    and checks its content digest.

    Raises:
        CheckpointError: one line naming ``path``: missing, empty, not a torch file or truncated,
            holding Python objects other than tensors and plain values, not a focalops checkpoint,
            lacking an entry, or corrupted (content digest mismatch).
    """
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: checkpoint not found")
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" in str(exc) and "Unsupported global" in str(exc):
            raise CheckpointError(
                f"{path}: refused: it holds Python objects other than tensors and plain values "
                "(opening it fully could run code from the file)"
            ) from None
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupted or not a torch file)") from None
    except Exception as exc:  # torch.load raises many types for a damaged or foreign file
        reason = "it ends early (truncated?)" if isinstance(exc, EOFError) else one_line(exc)
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a focalops checkpoint (no 'format': {FORMAT!r} entry)")
    if not isinstance(state.get("version"), int) or state["version"] > VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {state.get('version')!r} is newer than {VERSION}")
    missing = [k for k in (*REQUIRED, "sha256") if k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a complete focalops checkpoint (no {', '.join(map(repr, missing))})")
    try:
        digest = content_digest(state)
    except TypeError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if digest != state["sha256"]:
        raise CheckpointError(
            f"{path}: corrupted: content digest mismatch (stored sha256 {str(state['sha256'])[:16]}..., "
            f"content {digest[:16]}...)"
        )
    return state


def load_model(path: str, **overrides) -> Tuple[torch.nn.Module, Dict[str, Any]]:
    """The :class:`~focalops.models.RetinaNet` a checkpoint describes, with its weights, on CPU:
    ``(model, checkpoint)``. ``overrides`` replace config entries (e.g. ``score_thresh=0.3``).

    Raises:
        CheckpointError: the checkpoint cannot be loaded (see :func:`load_checkpoint`), or its
            config or weights do not make a model.
    """
    from focalops.models import RetinaNet

    ckpt = load_checkpoint(path)
    if not isinstance(ckpt["config"], dict):
        raise CheckpointError(f"{path}: its 'config' entry is not a dict")
    try:
        model = RetinaNet(**{**ckpt["config"], **overrides})
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: its model config does not build a RetinaNet ({one_line(exc)})") from None
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: its weights do not fit the model of its config ({one_line(exc)})") from None
    return model, ckpt
