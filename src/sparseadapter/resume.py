"""The resumable state of an unfinished run: its progress, RNG states, and the file holding them.

"Resume state" here, not "checkpoint": the compact sparse adapter format is
:mod:`sparseadapter.checkpoint`. The file keeps its historical name ``checkpoint.pt``.

A run's ``.partial`` folder holds one ``checkpoint.pt`` (torch zip format, loaded with
``weights_only=True``): the trainable weights and masks, the optimizer and scheduler states,
every process's RNG states, the data position (:class:`Progress`) and the pruning report.
It is written atomically: the new checkpoint goes to a temporary file that is flushed to disk
and then renamed over the old one, so a kill at any moment, also during a save, leaves the
previous or the new checkpoint, never a broken one. From format version 2 the file ends in a
SHA-256 trailer over the torch data, and a resume refuses a file that fails it (a damaged disk
or copy would otherwise resume silently into different weights). Version 1 files, written before
the trailer existed, are still read, without that check.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import random
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparseadapter.errors import CheckpointError
from sparseadapter.files import write_bytes

RESUME_FILE = "checkpoint.pt"
FORMAT_NAME = "sparseadapter-training-checkpoint"
FORMAT_VERSION = 2
TRAILER = b"\nsparseadapter-sha256:"
TRAILER_BYTES = len(TRAILER) + 64


@dataclass
class Progress:
    """Where a run stands and what it has found so far; all of it goes into the checkpoint."""

    epoch: int = 1  # the epoch in progress (epochs + 1 once all are done)
    batches_done: int = 0  # batches of that epoch already trained, on each process
    steps: int = 0  # optimizer steps so far
    loss_sum: float = 0.0  # training loss summed over the batches done in this epoch
    data_state: torch.Tensor | None = None  # the shuffling generator's state at the epoch start
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    best_state: dict[str, torch.Tensor] | None = None  # None: the best weights are the model's
    seen: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rng_states() -> dict[str, Any]:
    """This process's Python, NumPy, torch (and CUDA) RNG states, as plain values and tensors."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    states = {
        "python": random.getstate(),
        "numpy": (name, keys.tolist(), position, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore the RNG states saved by :func:`rng_states`."""
    random.setstate(states["python"])
    name, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def write_resume_state(path: Path, payload: dict[str, Any]) -> None:
    """Atomically replace the checkpoint at ``path`` with ``payload`` and its checksum."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **payload}, buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest().encode()
    write_bytes(path, data + TRAILER + digest)


def remove_checkpoint(path: Path) -> None:
    """Delete the checkpoint at ``path`` and temporary files left by saves that were killed."""
    path.unlink(missing_ok=True)
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        tmp.unlink(missing_ok=True)


def _verified(path: Path) -> tuple[bytes, bool]:
    """The torch data of a checkpoint file, and whether it carried a checksum (verified)."""
    data = path.read_bytes()
    data, trailer = data[:-TRAILER_BYTES], data[-TRAILER_BYTES:]
    if not trailer.startswith(TRAILER):
        return data + trailer, False
    if hashlib.sha256(data).hexdigest().encode() != trailer[len(TRAILER) :]:
        raise CheckpointError(
            f"{path} fails its SHA-256 check: it was damaged or modified after it was written; "
            "the run cannot be resumed safely: start it again with --overwrite"
        )
    return data, True


def read_resume_state(path: Path) -> dict[str, Any]:
    """The payload of a checkpoint; CheckpointError if it is unreadable or from a newer version."""
    data, checked = _verified(path)
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
    ) as err:
        raise CheckpointError(
            f"{path} is truncated or corrupted ({str(err).splitlines()[0]}); the run cannot "
            "be resumed: start it again with --overwrite"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise CheckpointError(
            f"{path} is not a sparseadapter training checkpoint; pass the folder of a run "
            "started with `sparseadapter train`"
        )
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} was written in training checkpoint format version {version!r}, but this "
            f"sparseadapter reads up to version {FORMAT_VERSION}: upgrade sparseadapter "
            "(pip install -U sparseadapter) to resume it"
        )
    if version >= 2 and not checked:
        raise CheckpointError(
            f"{path} lacks the SHA-256 trailer its format version has: it was truncated or "
            "modified; start the run again with --overwrite"
        )
    return payload
