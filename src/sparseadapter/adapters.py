"""Building an adapter model from a name: ``minilm`` + ``houlsby`` + width → a ready model.

Adapter names (the CLI's ``--adapter``), their configs (AdapterHub / PEFT) and what ``width``
means for each:

- houlsby: ``DoubleSeqBnConfig`` / none; the bottleneck dim
- pfeiffer: ``SeqBnConfig`` / none; the bottleneck dim
- parallel: ``ParBnConfig`` / none; the bottleneck dim
- mam: ``MAMConfig`` / none; the bottleneck dim of its parallel FFN adapter (prefix unchanged)
- prefix: ``PrefixTuningConfig`` / ``PrefixTuningConfig``; the prefix length (default 30)
- lora: ``LoRAConfig`` / ``LoraConfig``; the rank
- ia3: ``IA3Config`` / ``IA3Config``; none (a width is an error)

``width=None`` keeps each library's defaults, except LoRA: rank 8 on the query and value
projections with alpha 32 in both libraries (the official SparseAdapter code's setting; a given
width changes the rank, alpha stays 32). AdapterHub sizes a bottleneck as
``hidden_size // reduction_factor``, so a bottleneck width needs the model's hidden size; it is
turned into a reduction factor when the model is built (:func:`adapter_config` takes
``hidden_size`` for that).

``library="auto"`` picks AdapterHub for the adapters PEFT lacks (houlsby, pfeiffer, parallel,
mam) and for prefix tuning, and PEFT for lora and ia3; prefix tuning falls back to PEFT when the
``adapters`` package is not installed. PEFT configs carry the task's head type (``SEQ_CLS``,
``QUESTION_ANS`` or ``CAUSAL_LM``), so a classification or span head is trainable and saved with
the adapter; a causal LM's output layer (often tied to the input embeddings) stays frozen in
both libraries.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from torch import nn

from sparseadapter.budget import bottleneck_reduction, parameter_report
from sparseadapter.budget import large_sparse as widen_for_large_sparse
from sparseadapter.errors import ConfigError, shown
from sparseadapter.models import MODEL_ALIASES, resolve_model
from sparseadapter.optional import has_adapterhub
from sparseadapter.targets import FULL_MODULES, head_modules
from sparseadapter.tasks.base import CAUSAL_LM, QUESTION_ANSWERING, SEQUENCE_CLASSIFICATION

ADAPTERS = ("houlsby", "pfeiffer", "parallel", "mam", "prefix", "lora", "ia3")
LIBRARIES = ("auto", "adapterhub", "peft")
BOTTLENECK_ADAPTERS = ("houlsby", "pfeiffer", "parallel", "mam")
PEFT_ADAPTERS = ("prefix", "lora", "ia3")
LORA_RANK = 8
LORA_ALPHA = 32
PREFIX_LENGTH = 30
PEFT_HEADS = ("classifier", "score", "qa_outputs")  # what PEFT trains and saves by itself
PEFT_TASK_TYPES = {
    SEQUENCE_CLASSIFICATION: "SEQ_CLS",
    QUESTION_ANSWERING: "QUESTION_ANS",
    CAUSAL_LM: "CAUSAL_LM",
}
# Target modules for architectures PEFT has no defaults for: the counterparts of its BERT
# defaults (LoRA on query and value; (IA)3 on key, value and the FFN output).
PEFT_TARGETS: dict[str, dict[str, dict[str, list[str]]]] = {
    "mpnet": {
        "lora": {"target_modules": ["q", "v"]},
        "ia3": {
            "target_modules": ["k", "v", "output.dense"],
            "feedforward_modules": ["output.dense"],
        },
    },
}


def resolve_library(adapter: str, library: str = "auto") -> str:
    """The library that builds ``adapter``: "adapterhub" or "peft"; ConfigError for names that
    no library can build. Whether the library is installed is checked by
    :func:`require_library`, when an adapter is built, so a run config validates anywhere."""
    if adapter not in ADAPTERS:
        raise ConfigError(f"unknown adapter {shown(adapter)}; choose one of {', '.join(ADAPTERS)}")
    if library not in LIBRARIES:
        raise ConfigError(
            f"unknown adapter library {shown(library)}; choose one of {', '.join(LIBRARIES)}"
        )
    if library == "peft" and adapter not in PEFT_ADAPTERS:
        raise ConfigError(
            f"PEFT has no {shown(adapter)} adapter (only {', '.join(PEFT_ADAPTERS)}); "
            "use library 'adapterhub' or 'auto'"
        )
    if library == "auto":
        if adapter in ("lora", "ia3") or (adapter == "prefix" and not has_adapterhub()):
            return "peft"
        return "adapterhub"
    return library


def require_library(adapter: str, library: str = "auto") -> str:
    """:func:`resolve_library`, and a ConfigError when that library is not installed."""
    chosen = resolve_library(adapter, library)
    if chosen == "adapterhub" and not has_adapterhub():
        raise ConfigError(
            f'the {shown(adapter)} adapter needs AdapterHub: pip install "sparseadapter[adapters]"'
            + (" (or use library 'peft')" if adapter in PEFT_ADAPTERS else "")
        )
    return chosen


def _check_width(width: Any, adapter: str) -> None:
    if width is None:
        return
    if adapter == "ia3":
        raise ConfigError("(IA)3 has no width (it scales activations); drop the width option")
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ConfigError(f"adapter width must be a positive integer, got {shown(width)}; e.g. 64")


def _adapterhub_config(adapter: str, width: int | None, hidden_size: int | None) -> Any:
    import adapters

    if adapter in BOTTLENECK_ADAPTERS and width is not None:
        if hidden_size is None:
            raise ConfigError(
                f"a {shown(adapter)} bottleneck width needs the model's hidden size: pass hidden_size "
                "(build_model does this)"
            )
        reduction = {"reduction_factor": bottleneck_reduction(hidden_size, width)}
    else:
        reduction = {}
    if adapter == "houlsby":
        return adapters.DoubleSeqBnConfig(**reduction)
    if adapter == "pfeiffer":
        return adapters.SeqBnConfig(**reduction)
    if adapter == "parallel":
        return adapters.ParBnConfig(**reduction)
    if adapter == "mam":
        return adapters.MAMConfig(adapter=adapters.ParBnConfig(**reduction))
    if adapter == "prefix":
        return adapters.PrefixTuningConfig(prefix_length=width or PREFIX_LENGTH)
    if adapter == "lora":
        return adapters.LoRAConfig(r=width or LORA_RANK, alpha=LORA_ALPHA)
    return adapters.IA3Config()


def _peft_config(adapter: str, width: int | None, head: str) -> Any:
    import peft

    task = peft.TaskType[PEFT_TASK_TYPES[head]]
    if adapter == "prefix":
        return peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=width or PREFIX_LENGTH)
    if adapter == "lora":
        return peft.LoraConfig(task_type=task, r=width or LORA_RANK, lora_alpha=LORA_ALPHA)
    return peft.IA3Config(task_type=task)


def adapter_config(
    adapter: str,
    library: str = "auto",
    width: int | None = None,
    hidden_size: int | None = None,
    head: str = SEQUENCE_CLASSIFICATION,
) -> Any:
    """The PEFT or AdapterHub config of ``adapter`` (one of :data:`ADAPTERS`).

    ``width`` is the bottleneck dim, LoRA rank or prefix length (see the module docstring);
    a bottleneck width also needs ``hidden_size``.
    """
    library = require_library(adapter, library)
    _check_width(width, adapter)
    if library == "adapterhub":
        return _adapterhub_config(adapter, width, hidden_size)
    return _peft_config(adapter, width, head)


def _check_peft_prefix_head(model: nn.Module) -> None:
    # PEFT's prefix tuning for classification runs the backbone itself when the model's forward
    # takes no past_key_values, and feeds outputs[1] (the pooler output) to the head.
    parameters = inspect.signature(model.forward).parameters
    if "past_key_values" in parameters:
        return
    if "cache" in parameters:  # a transformers 5 decoder
        raise ConfigError(
            f"PEFT prefix tuning cannot run on this {model.config.model_type} model: its forward "
            "takes no past_key_values (transformers 5 renamed it to cache); use transformers "
            "4.57, or another adapter"
        )
    backbone = model.base_model
    if getattr(backbone, "pooler", None) is None:
        raise ConfigError(
            f"PEFT prefix tuning cannot classify with a {model.config.model_type} model: PEFT "
            "feeds the backbone's pooler output to the head and this model has no pooler; use "
            "library 'adapterhub' (or 'auto') for prefix tuning"
        )
    if "past_key_values" not in inspect.signature(backbone.forward).parameters:
        # transformers 5 renamed the encoders' past_key_values; PEFT still passes the old name.
        raise ConfigError(
            f"PEFT prefix tuning cannot run on this {model.config.model_type} model: its "
            "forward takes no past_key_values (transformers 5 renamed it); use library "
            "'adapterhub' with transformers 4.57, or another adapter"
        )


def attach_adapter(
    model: nn.Module,
    adapter: str | None,
    library: str = "auto",
    width: int | None = None,
    large_sparse: float = 1.0,
    adapter_name: str = "task",
    head: str = SEQUENCE_CLASSIFICATION,
    modules_to_save: list[str] | None = None,
) -> tuple[nn.Module, float | None]:
    """Add a trainable ``adapter`` to a loaded ``model`` with a ``head`` (a task's head type).

    Only the adapter, the task head and the base-model modules named in ``modules_to_save``
    (trained in full, never pruned; e.g. ``["pooler"]``) stay trainable. ``adapter=None`` means
    full fine-tuning (every parameter trainable). ``large_sparse > 1`` widens the adapter by that
    factor and returns the sparsity that keeps the dense adapter's non-zero budget; otherwise the
    returned sparsity is None. PEFT wraps the model, so use the returned model.
    """
    if large_sparse != 1 and adapter is None:
        raise ConfigError("Large-Sparse widens an adapter: choose an adapter, or drop large_sparse")
    if adapter is None:
        model.requires_grad_(True)
        return model, None
    hidden_size = model.config.hidden_size
    library = require_library(adapter, library)
    config = adapter_config(adapter, library, width, hidden_size, head)
    sparsity = None
    if large_sparse != 1:
        config, sparsity = widen_for_large_sparse(config, large_sparse, hidden_size)
    if library == "peft":
        import peft

        if adapter == "prefix":
            _check_peft_prefix_head(model)
        if getattr(config, "target_modules", None) is None:
            for key, value in (
                PEFT_TARGETS.get(model.config.model_type, {}).get(adapter, {}).items()
            ):
                setattr(config, key, value)

        # PEFT adds the heads named classifier/score to modules_to_save itself; other heads
        # (BART's classification_head, DistilBERT's pre_classifier) would stay frozen.
        # A causal LM's output layer is not a task head: it stays frozen.
        heads = [] if head == CAUSAL_LM else head_modules(model)
        extra = [h for h in heads if h not in PEFT_HEADS] + _module_names(model, modules_to_save)
        if extra:
            config.modules_to_save = [*(config.modules_to_save or []), *extra]
        try:
            return peft.get_peft_model(model, config, adapter_name=adapter_name), sparsity
        except ValueError as exc:  # e.g. no default LoRA target modules for this architecture
            raise ConfigError(
                f"PEFT cannot add {shown(adapter)} to a {model.config.model_type} model "
                f"({str(exc).splitlines()[0]}); try library 'adapterhub'"
            ) from exc
    import adapters

    try:
        adapters.init(model)
        model.add_adapter(adapter_name, config=config)
    except ValueError as exc:  # an architecture or adapter type AdapterHub does not support
        raise ConfigError(
            f"AdapterHub cannot add {shown(adapter)} to a {model.config.model_type} model "
            f"({str(exc).splitlines()[0][:160]}); see docs/models.md for what works where"
        ) from exc
    train_adapterhub_adapter(model, adapter_name)
    if head == CAUSAL_LM:  # AdapterHub freezes the backbone only; the LM head is not the task's
        model.get_output_embeddings().requires_grad_(False)
    train_in_full(model, modules_to_save or [])
    return model, sparsity


def _module_names(model: nn.Module, names: list[str] | None) -> list[str]:
    """The qualified names of the modules ``names`` name (a whole name or its last parts, as
    PEFT's ``modules_to_save`` matches), each of which must exist."""
    found = []
    for name in names or []:
        matches = [n for n, _ in model.named_modules() if n == name or n.endswith(f".{name}")]
        if not matches:
            raise ConfigError(
                f"modules_to_save: this {model.config.model_type} model has no module named "
                f"{shown(name)}; name one of its modules, e.g. pooler"
            )
        found += matches
    return found


def train_in_full(model: nn.Module, names: list[str]) -> None:
    """Make the base-model modules ``names`` trainable in full beside an AdapterHub adapter and
    record them on the model (targets.full_modules: never pruned; saved and rebuilt with the
    checkpoint)."""
    modules = _module_names(model, names)
    for name in modules:
        model.get_submodule(name).requires_grad_(True)
    setattr(model, FULL_MODULES, modules)


def train_adapterhub_adapter(model: nn.Module, name: str) -> None:
    """``model.train_adapter(name)`` without AdapterHub's spurious warning "There are adapters
    available but none are activated": it runs a forward context while it switches the active
    adapter, before the new one is set, so the warning says nothing about the trained model."""
    logger = logging.getLogger("adapters.model_mixin")
    spurious = _DropMessage("none are activated for the forward pass")
    logger.addFilter(spurious)
    try:
        model.train_adapter(name)
    finally:
        logger.removeFilter(spurious)


class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def load_model(
    model: str,
    num_labels: int = 2,
    problem_type: str | None = None,
    head: str = SEQUENCE_CLASSIFICATION,
) -> nn.Module:
    """A model with a ``head`` (sequence classification, question answering or causal LM) from
    an alias, a local directory or a hub id. A classification head trained for another number
    of labels is initialized anew (transformers logs which)."""
    import transformers

    path = resolve_model(model)
    if head == SEQUENCE_CLASSIFICATION:
        auto = transformers.AutoModelForSequenceClassification
        extra: dict[str, Any] = {"num_labels": num_labels, "ignore_mismatched_sizes": True}
        if problem_type:
            extra["problem_type"] = problem_type
    elif head == QUESTION_ANSWERING:
        auto, extra = transformers.AutoModelForQuestionAnswering, {}
    elif head == CAUSAL_LM:
        auto, extra = transformers.AutoModelForCausalLM, {}
    else:
        raise ConfigError(
            f"unknown model head {shown(head)}; one of {SEQUENCE_CLASSIFICATION}, {QUESTION_ANSWERING}, {CAUSAL_LM}"
        )
    try:
        return auto.from_pretrained(path, **extra)
    except (OSError, ValueError) as exc:
        reason = (str(exc).strip() or type(exc).__name__).splitlines()[0].split(". ")[0][:200]
        raise ConfigError(
            f"cannot load a model from {path!r} ({reason}); pass a directory holding config.json "
            f"and weights, a model id cached for offline use, or an alias ({', '.join(MODEL_ALIASES)})"
        ) from exc


def build_model(
    model: str,
    num_labels: int,
    adapter: str | None,
    library: str = "auto",
    width: int | None = None,
    large_sparse: float = 1.0,
    adapter_name: str = "task",
    problem_type: str | None = None,
    head: str = SEQUENCE_CLASSIFICATION,
    modules_to_save: list[str] | None = None,
) -> tuple[nn.Module, float | None]:
    """Load ``model`` with a ``head`` and attach ``adapter`` (see attach_adapter)."""
    if adapter is not None:
        require_library(adapter, library)  # fail on bad options before loading any weights
        _check_width(width, adapter)
    loaded = load_model(model, num_labels, problem_type, head)
    return attach_adapter(
        loaded, adapter, library, width, large_sparse, adapter_name, head, modules_to_save
    )


def describe(model: nn.Module) -> str:
    """One line: the adapter library and type, and trainable / total parameter counts."""
    report = parameter_report(model)
    if hasattr(model, "peft_config") and hasattr(model, "active_adapter"):
        name = model.active_adapter
        kind = f"PEFT {model.peft_config[name].peft_type.value} {shown(name)}"
    elif getattr(model, "adapters_config", None) is not None and model.adapters_config.adapters:
        names = list(model.adapters_config.adapters)
        kind = "AdapterHub " + ", ".join(
            f"{type(model.adapters_config.get(n)).__name__} {shown(n)}" for n in names
        )
    else:
        kind = "full fine-tuning"
    share = report.trainable / report.total if report.total else 0.0
    return f"{kind}: {report.trainable:,} trainable of {report.total:,} parameters ({share:.2%})"
