"""Loading a task's split from the datasets hub: the one place that imports ``datasets``."""

from __future__ import annotations

from typing import Any

from sparseadapter.errors import DataError


def hub_split(task: str, dataset: str, split: str, local: str, config: str | None = None) -> Any:
    """``split`` of hub ``dataset`` (``config`` its subset); a one-line DataError when the
    ``datasets`` package is missing or the hub cannot be reached, naming ``local``: what to pass
    with --data-dir instead."""
    try:
        import datasets
    except ImportError as err:
        raise DataError(
            f"loading {task} from the hub needs the datasets package: "
            f"`pip install sparseadapter[hub]`, or pass --data-dir with {local}"
        ) from err
    name = f"{dataset}/{config}" if config else dataset
    try:
        return datasets.load_dataset(dataset, *([config] if config else []), split=split)
    except OSError as err:
        raise DataError(
            f"could not load {name} ({split}) from the hub: {err}; check the network "
            f"connection, or pass --data-dir with {local}"
        ) from err
