"""What every benchmark script shares: its environment, its folders, its data and its output.

Import this module before torch or transformers: the environment it sets is read when they load.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Idle OpenMP threads sleep instead of spinning: on a shared, oversubscribed machine spinning
# threads made every step 5-10x slower (they burn the time slices their partners need).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from sparseadapter.batching import PadCollator  # noqa: E402
from sparseadapter.files import write_bytes  # noqa: E402
from sparseadapter.models import MODEL_ALIASES  # noqa: E402
from sparseadapter.tasks.classification import encode_examples  # noqa: E402
from sparseadapter.tasks.glue import glue_spec, load_glue  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
RESULTS = BENCHMARKS / "results"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "glue"


def parser(doc: str | None, **kwargs: Any) -> argparse.ArgumentParser:
    """The script's argument parser, described by the first line of its docstring."""
    return argparse.ArgumentParser(description=(doc or "").splitlines()[0], **kwargs)


def model_label(model: str) -> str:
    """The name a benchmarked model goes by in run names, records and the report: the alias
    itself (``minilm``), a local folder's name (``gpu.sh`` stages each alias in a folder named
    after it, so ``/tmp/stage/minilm`` is ``minilm``), or a hub id with ``/`` spelled ``--``."""
    if model in MODEL_ALIASES:
        return model
    path = Path(model)
    return path.name if path.is_dir() else model.replace("/", "--")


def add_data_dir(p: argparse.ArgumentParser, **kwargs: Any) -> None:
    """``--data-dir``: the GLUE TSV folder (default ../shared/data/glue)."""
    p.add_argument("--data-dir", **{"type": Path, "default": DEFAULT_DATA, **kwargs})


def write_json(path: Path, data: Any, indent: int = 1, newline: bool = False) -> None:
    """``data`` as indented JSON (a final newline where the script's files always had one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=indent) + ("\n" if newline else "")
    path.write_text(text, encoding="utf-8")


def write_text(path: Path, text: str) -> None:
    """Atomically: a reader sees the old file or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, text.encode("utf-8"))


def task_features(
    tokenizer, task: str, data_dir: Path | str | None, limit: int | None, max_length: int = 128
) -> list[dict[str, Any]]:
    """The first ``limit`` training examples of a GLUE task, tokenized as training does
    (``sparseadapter.tasks.classification.encode_examples``)."""
    spec = glue_spec(task)
    examples = load_glue(spec.name, "train", data_dir, limit)
    return encode_examples(tokenizer, examples, max_length, spec.is_regression)


def fixed_batches(features: list[dict[str, Any]], tokenizer, size: int) -> list[dict]:
    """``features`` in their order, cut into batches of ``size``, each padded to its longest
    example by training's own collator."""
    collate = PadCollator(tokenizer.pad_token_id or 0)
    return [collate(features[i : i + size]) for i in range(0, len(features), size)]


def library_versions() -> dict[str, str]:
    """Versions of the libraries a training run depends on (absent ones left out)."""
    from importlib.metadata import PackageNotFoundError, version

    import sparseadapter

    found = {"sparseadapter": sparseadapter.__version__}  # the imported one, installed or not
    for name in ("torch", "transformers", "peft", "adapters", "accelerate"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found
