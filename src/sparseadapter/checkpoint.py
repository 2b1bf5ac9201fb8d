"""Compact sparse checkpoints: save_sparse / load_sparse and the base model's fingerprint (dense
export and LoRA merging: export.py; the adapter libraries' glue: libraries.py; mask coding:
maskcode.py; value precision: quantize.py).

A sparse checkpoint is a directory with two files (format: docs/checkpoint-format.md):
``adapter.safetensors`` holds the values of every trainable tensor end to end (pruned ones: only
the kept values), at the chosen precision, and the entropy-coded masks (versions 2 and 3; version
1 stored one tensor per parameter with a bitmask or indices, and still loads);
``sparse_config.deflate`` holds everything needed to rebuild the adapter on a fresh base model and
a SHA-256 checksum over both, as packed JSON (metapack.py; versions 1 and 2 wrote it as plain
``sparse_config.json``, which still loads). Writes are atomic: a temporary directory next to the
target is filled and then renamed into place, so an existing checkpoint survives any failure.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

from sparseadapter.config import SparsityConfig
from sparseadapter.errors import CheckpointError, shown
from sparseadapter.files import check_parent, replace_directory, write_new
from sparseadapter.formatv1 import decoded_v1
from sparseadapter.libraries import (
    adapter_config_dict,
    adapter_config_of,
    adapter_name,
    attach_adapterhub,
    attach_peft,
    head_configs,
    library_versions,
    model_library,
)
from sparseadapter.maskcode import coding_name, decode_masks, encode_masks, random_masks
from sparseadapter.metapack import canonical, pack, unpack
from sparseadapter.quantize import GROUP_SIZE, INT_LEVELS, dequantize, precision_name, quantize
from sparseadapter.sparsify import apply_masks, get_masks, masked_parameters, remove_sparsity
from sparseadapter.targets import adapter_library, full_modules

FORMAT_NAME = "sparseadapter-sparse-checkpoint"
FORMAT_VERSION = 3
WEIGHTS_FILE = "adapter.safetensors"
PACKED_META_FILE = "sparse_config.deflate"  # the metadata: what rebuilds the adapter, the checksum
META_FILE = "sparse_config.json"  # the metadata of versions 1 and 2, plain JSON
FINGERPRINT_KEYS = (
    "model_type",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vocab_size",
    "num_labels",
)
EMBEDDING_DIGEST_ROWS = 16
HEADER_BASE_BYTES = 4096
HEADER_BYTES_PER_TENSOR = 512


def size_bound(sparsity: float, pruned_bytes: int, unpruned_bytes: int, num_tensors: int) -> float:
    """The most bytes a fp32 checkpoint directory takes: the format's size guarantee.

    ``pruned_bytes``/``unpruned_bytes``: dense bytes of the saved tensors that are/are not
    pruned; ``num_tensors``: how many tensors are saved. Kept values cost (1 - s) of the pruned
    bytes, the coded masks at most about a bitmask, 1/32 of them (the smaller of two codings;
    LZMA grows a bitmask that does not compress by well under 1 %), unpruned tensors are stored
    as they are, and the headers fit in ``HEADER_BASE_BYTES + HEADER_BYTES_PER_TENSOR *
    num_tensors`` (version 1 stored every tensor's name; version 2 needs about 2.5 KiB in all).
    """
    header = HEADER_BASE_BYTES + HEADER_BYTES_PER_TENSOR * num_tensors
    return (1 - sparsity) * pruned_bytes + pruned_bytes / 32 + unpruned_bytes + header


def base_identity(model: nn.Module) -> dict[str, Any]:
    """What identifies the base model: its name, shape-defining config and a digest of the
    input embeddings. A PEFT wrapper that trains the embeddings (``modules_to_save``,
    ``trainable_token_indices``) is looked through, so the digest is the frozen original's."""
    config = model.config
    embeddings = model.get_input_embeddings()
    embedding = getattr(embeddings, "original_module", embeddings).weight.detach()
    rows = embedding[:EMBEDDING_DIGEST_ROWS].cpu().contiguous()
    return {
        "name_or_path": getattr(config, "name_or_path", ""),
        **{key: getattr(config, key, None) for key in FINGERPRINT_KEYS},
        "embedding_dtype": str(embedding.dtype).removeprefix("torch."),
        "embedding_sha256": hashlib.sha256(rows.view(torch.uint8).numpy().tobytes()).hexdigest(),
    }


def base_mismatch(saved: dict[str, Any], model: nn.Module, ignore: Collection[str] = ()) -> str:
    """How ``model``'s base differs from the one a file was written on (``saved``, what
    :func:`base_identity` recorded), naming that base: its shape-defining config (but the keys
    in ``ignore``), and its input embeddings when both are in one dtype (the same base loaded in
    bf16 is the same base). The one rule for every file that names its base model; "" when it
    fits."""
    current = base_identity(model)
    diffs = [
        f"{key}={shown(saved.get(key))} in the file, {shown(current[key])} in the model"
        for key in FINGERPRINT_KEYS
        if key not in ignore and saved.get(key) != current[key]
    ]
    if (
        saved.get("embedding_dtype") == current["embedding_dtype"]
        and saved.get("embedding_sha256") != current["embedding_sha256"]
    ):
        diffs.append("the input embedding weights differ")
    if not diffs:
        return ""
    return f"{saved.get('name_or_path') or 'unnamed'}: {'; '.join(diffs)}"


def _check_base(model: nn.Module, meta: dict[str, Any]) -> None:
    # AdapterHub flex heads set num_labels themselves; they are rebuilt from meta["heads"]
    mismatch = base_mismatch(meta["base_model"], model, ["num_labels"] if meta["heads"] else [])
    if mismatch:
        raise CheckpointError(
            f"this checkpoint was saved on another base model ({mismatch}). Load it onto the "
            "base model it was trained on, with the same num_labels"
        )


def checksum(payload: bytes, meta: dict[str, Any]) -> str:
    """SHA-256 over the tensor file and every metadata field except the checksum itself."""
    digest = hashlib.sha256(payload)
    digest.update(canonical({k: v for k, v in meta.items() if k != "sha256"}))
    return digest.hexdigest()


def replace_checkpoint(
    path: str | os.PathLike,
    marker: str | tuple[str, ...],
    overwrite: bool,
    write: Callable[[Path], None],
) -> Path:
    """Write a checkpoint folder atomically (:func:`files.replace_directory`).

    An existing ``path`` is replaced only if it is empty, or if it holds ``marker`` (a file that
    marks the same kind of output; one of several for a tuple) and ``overwrite`` is set; a folder
    of anything else is never replaced.
    """
    path = Path(path)
    check_parent(path)
    markers = (marker,) if isinstance(marker, str) else marker
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        if not path.is_dir() or not any((path / m).exists() for m in markers):
            raise CheckpointError(
                f"{path} exists and is not a previous checkpoint of this kind (no "
                f"{' or '.join(markers)}): "
                "refusing to replace it; choose a new directory or remove it first"
            )
        if not overwrite:
            raise CheckpointError(
                f"{path} already holds a checkpoint: pass overwrite=True (--overwrite) to "
                "replace it, or choose a new directory"
            )
    return replace_directory(path, write)


def sparsity_config_dict(model: nn.Module) -> dict[str, Any] | None:
    """The ``SparsityConfig`` of the model's masks as stored in metadata (None: no masks, or
    masks attached without a config)."""
    state = masked_parameters(model)
    return state.config.to_dict() if state and state.config else None


def common_metadata(model: nn.Module, library: str, name: str) -> dict[str, Any]:
    """The metadata fields every format version shares (all but the tensor layout)."""
    return {
        "format": FORMAT_NAME,
        "library": library,
        "adapter_name": name,
        "adapter_config": adapter_config_dict(adapter_config_of(model, library, name)),
        "heads": head_configs(model, library),
        "modules_to_save": full_modules(model),
        "base_model": base_identity(model),
        "sparsity_config": sparsity_config_dict(model),
        "versions": library_versions(library),
    }


def finish_metadata(meta: dict[str, Any], payload: bytes) -> dict[str, Any]:
    """``meta`` as it is written (JSON types only) with its checksum over ``payload``."""
    meta = json.loads(canonical(meta))
    meta["sha256"] = checksum(payload, meta)
    return meta


def layout_digest(named: list[tuple[str, tuple[int, ...]]]) -> str:
    """SHA-256 of the trainable tensors' names and shapes, in ``named_parameters`` order: a
    version 2 file stores no names, the rebuilt model supplies them and this checks them."""
    text = "\n".join(f"{n}:{','.join(map(str, shape))}" for n, shape in named)
    return hashlib.sha256(text.encode()).hexdigest()


def mask_digest(masks: list[torch.Tensor]) -> str:
    bits = np.concatenate([np.packbits(m.detach().cpu().flatten().numpy()) for m in masks])
    return hashlib.sha256(bits.tobytes()).hexdigest()


def _mask_record(masks: dict[str, torch.Tensor], config: SparsityConfig | None) -> dict[str, Any]:
    """How the masks are stored: regenerated from the random pruner's seed when that gives them
    back exactly, else entropy-coded (maskcode.py)."""
    shapes = {n: tuple(m.shape) for n, m in masks.items()}
    digest = mask_digest(list(masks.values()))
    if config is not None and config.method == "random":
        again = random_masks(shapes, config)
        if mask_digest(list(again.values())) == digest:
            return {"coding": "random", "sha256": digest}
    return {"coding": "coded"}


def encode_trainable(
    model: nn.Module, precision: str
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every trainable tensor of ``model`` as format 3 stores it, and the layout metadata that
    :func:`load_tensors` reads back (``format_version``, ``precision``, ``group_size``,
    ``tensors``, ``masks``): the values laid end to end at ``precision`` (pruned tensors: the
    kept values), the masks coded or, for the random pruner, left to its seed."""
    state = masked_parameters(model)
    if state is not None:
        state.apply_()
    masks = get_masks(model)
    trainable = [(n, p.detach().cpu()) for n, p in model.named_parameters() if p.requires_grad]
    parts = [
        p.flatten()[masks[n].detach().cpu().flatten()] if n in masks else p.flatten()
        for n, p in trainable
    ]
    sizes = [part.numel() for part in parts]
    tensors = quantize(torch.cat([part.float() for part in parts]), sizes, precision)
    pruned = {n: masks[n] for n, _ in trainable if n in masks}
    record = _mask_record(pruned, state.config if state else None) if pruned else None
    if record is not None and record["coding"] == "coded":
        code = encode_masks(list(pruned.values()))
        record["coding"] = coding_name(code)
        tensors["masks"] = torch.frombuffer(bytearray(code), dtype=torch.uint8)
    layout = {
        "format_version": FORMAT_VERSION,
        "precision": precision,
        "group_size": GROUP_SIZE if precision in INT_LEVELS else None,
        "tensors": {
            "count": len(trainable),
            "sha256": layout_digest([(n, tuple(p.shape)) for n, p in trainable]),
            "pruned": [i for i, (n, _) in enumerate(trainable) if n in masks],
        },
        "masks": record,
    }
    return tensors, layout


def save_sparse(
    model: nn.Module,
    path: str | os.PathLike,
    precision: str | torch.dtype | None = None,
    overwrite: bool = False,
    *,
    dtype: str | torch.dtype | None = None,
) -> Path:
    """Save the model's adapter (and head) as a compact sparse checkpoint directory.

    Stores every trainable tensor: pruned ones (those with a sparsify mask) as kept values plus
    an entropy-coded mask (a random pruner's mask as its seed), the rest dense. ``precision``:
    "fp32" (the default: a bit-exact round trip of float32 parameters), "bf16", "fp16", "int8"
    or "int4" (one scale per group of 64 values), for pruned and unpruned tensors alike; the
    older ``dtype="float16"`` / ``"bfloat16"`` / ``"float32"`` is an alias. An existing
    checkpoint at ``path`` is replaced only with ``overwrite=True``; any other non-empty folder
    never is. Returns the checkpoint directory.
    """
    precision = precision_name(precision, dtype)
    library = model_library(model)
    name = adapter_name(model, library)
    tensors, layout = encode_trainable(model, precision)
    payload = safetensors.torch.save(tensors)
    meta = finish_metadata({**common_metadata(model, library, name), **layout}, payload)

    def write(tmp: Path) -> None:
        write_new(tmp / WEIGHTS_FILE, payload)
        write_new(tmp / PACKED_META_FILE, pack(meta))

    return replace_checkpoint(path, (PACKED_META_FILE, META_FILE), overwrite, write)


def read_sparse(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The verified metadata and stored tensors of a sparse checkpoint.

    Raises :class:`CheckpointError` for a missing, truncated or tampered checkpoint and for one
    written in a newer format version.
    """
    path = Path(path)
    meta = read_metadata(path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise CheckpointError(
            f"{path} holds no sparseadapter checkpoint description: save it with save_sparse"
        )
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(
            f"{path} has an invalid format_version {shown(version)}: save it again"
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} uses checkpoint format version {version}, but this sparseadapter reads up to "
            f"version {FORMAT_VERSION}: upgrade sparseadapter (pip install -U sparseadapter)"
        )
    payload = (path / WEIGHTS_FILE).read_bytes()
    if checksum(payload, meta) != meta.get("sha256"):
        raise CheckpointError(
            f"{path} fails its SHA-256 check: {WEIGHTS_FILE} or {META_FILE} was truncated or "
            "modified after saving; restore the checkpoint from a good copy or save it again"
        )
    return meta, safetensors.torch.load(payload)


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """A sparse checkpoint's metadata as a dict (unverified: :func:`read_sparse` checks it)."""
    path = Path(path)
    packed, plain = path / PACKED_META_FILE, path / META_FILE
    config_file = packed if packed.is_file() else plain
    if not config_file.is_file() or not (path / WEIGHTS_FILE).is_file():
        raise CheckpointError(
            f"{path} is not a sparse checkpoint ({PACKED_META_FILE} or {META_FILE}, and "
            f"{WEIGHTS_FILE} expected): pass the directory written by save_sparse"
        )
    try:
        if config_file == packed:
            return unpack(packed.read_bytes())
        return json.loads(plain.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as err:  # JSONDecodeError is a ValueError
        raise CheckpointError(
            f"{config_file} is not readable metadata ({err}): the checkpoint is truncated or "
            "corrupted; save it again"
        ) from None


def _masks_v2(
    meta: dict[str, Any], tensors: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]]
) -> dict[str, torch.Tensor]:
    record = meta["masks"]
    if record is None:
        return {}
    if record["coding"] != "random":
        return dict(
            zip(shapes, decode_masks(tensors["masks"].numpy().tobytes(), list(shapes.values())))
        )
    masks = random_masks(shapes, SparsityConfig.from_dict(meta["sparsity_config"]))
    if mask_digest(list(masks.values())) != record["sha256"]:
        raise CheckpointError(
            "the random pruner's seed gives another mask here than when the checkpoint was saved "
            f"(torch {torch.__version__} here, {meta['versions'].get('torch')} then): load it with "
            "the torch version that saved it, or re-save it there with a coded mask"
        )
    return masks


def _decoded_v2(
    named: dict[str, nn.Parameter], meta: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    trainable = [(n, p) for n, p in named.items() if p.requires_grad]
    layout = meta["tensors"]
    if layout_digest([(n, tuple(p.shape)) for n, p in trainable]) != layout["sha256"]:
        counts = (
            f"{layout['count']} tensors in the checkpoint, {len(trainable)} trainable in the model"
        )
        raise CheckpointError(
            f"the checkpoint's tensors are not the model's ({counts}; names or shapes differ): "
            "the model carries another adapter configuration; pass a fresh base model"
        )
    pruned = [trainable[i][0] for i in layout["pruned"]]
    masks = _masks_v2(meta, tensors, {n: tuple(named[n].shape) for n in pruned})
    sizes = [int(masks[n].sum()) if n in masks else p.numel() for n, p in trainable]
    coded = meta["format_version"] >= 3  # version 2 stored integer codes packed
    values = dequantize(tensors, sizes, meta["precision"], meta["group_size"], coded)
    decoded = {}
    for (n, p), part in zip(trainable, values.split(sizes)):
        keep = masks.get(n)
        value = torch.zeros(p.numel(), dtype=torch.float32)
        value[keep.flatten() if keep is not None else slice(None)] = part
        decoded[n] = (value.view(p.shape).to(p.dtype), keep)
    return decoded


def load_tensors(model: nn.Module, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Copy the stored ``tensors`` into ``model``'s trainable tensors and re-attach the masks,
    as ``meta`` (a checkpoint's metadata, or a layout from :func:`encode_trainable` with the
    ``sparsity_config`` and ``versions``) describes them."""
    named = dict(model.named_parameters())
    decode = decoded_v1 if meta["format_version"] == 1 else _decoded_v2
    decoded = decode(named, meta, tensors)
    with torch.no_grad():
        for n, (value, _) in decoded.items():
            named[n].copy_(value)
    masks = {n: keep for n, (_, keep) in decoded.items() if keep is not None}
    if masks:
        config = meta["sparsity_config"]
        apply_masks(model, masks, SparsityConfig.from_dict(config) if config else None)
    else:  # a dense checkpoint: masks the model carried before would zero the loaded weights
        remove_sparsity(model)


def load_sparse(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Rebuild a saved adapter on ``model`` and load its weights and masks.

    ``model`` is a fresh base model (e.g. ``AutoModelForSequenceClassification.from_pretrained``
    of the same checkpoint and num_labels), or a model already carrying the same adapter. Returns
    the adapted model (a new PeftModel for PEFT, ``model`` itself for AdapterHub) with exactly the
    saved tensors trainable and the masks enforced, ready for evaluation or more training; the
    train/eval mode of ``model`` is kept.
    """
    meta, tensors = read_sparse(path)
    _check_base(model, meta)
    carried = adapter_library(model)
    if carried is not None and carried != meta["library"]:
        raise CheckpointError(
            f"{path} holds a {meta['library']} adapter but the model carries another adapter "
            f"({carried}): pass a fresh base model, or the run folder the checkpoint belongs to"
        )
    training = model.training
    attach = attach_peft if meta["library"] == "peft" else attach_adapterhub
    model = attach(model, meta)
    load_tensors(model, meta, tensors)
    model.train(training)
    return model
