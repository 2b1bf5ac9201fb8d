"""The configuration of one training run: nested dataclasses, YAML files and ``--set`` overrides.

A run is resolved from, in order (later wins): the defaults, a YAML file (``--config``), the
command-line flags, and ``--set section.key=value`` overrides. Values left unset (``null``) are
derived: ``train.lr`` (1e-3 for adapters, 5e-5 for full fine-tuning), ``prune.sparsity`` (0.4, or
``1 - 1/K`` with Large-Sparse K), ``prune.seed`` (``train.seed``), and from the task
(:mod:`sparseadapter.tasks`): ``model.name``, ``data.max_length`` and the batch sizes. The resolved
config written to a run folder holds every value explicitly, so a run can be rebuilt from it.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Container, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from sparseadapter.config import (
    DEFAULT_LR_DENSITY_EXPONENT,
    SparsityConfig,
    check_seed,
    large_sparse_sparsity,
)
from sparseadapter.errors import ConfigError, not_utf8_message, shown
from sparseadapter.optional import has_adapterhub

FULL_FINETUNE = "full"
FUSION = "fusion"
NO_PRUNING = "none"
MIXED_PRECISION = ("no", "bf16", "fp16")
SELECTIONS = ("best", "last")
DEFAULT_LR_ADAPTER = 1e-3
DEFAULT_LR_FULL = 5e-5
TRACKERS = ("tensorboard", "wandb", "mlflow")
DEFAULT_SPARSITY: float = SparsityConfig.sparsity  # the one default, written in config.py
# The paper's Houlsby adapter; LoRA (PEFT) where AdapterHub is not installed, so that a PEFT-only
# install runs with the defaults too (the run's config.yaml records which one it was).
DEFAULT_ADAPTER = "houlsby" if has_adapterhub() else "lora"


@dataclass
class ModelConfig:
    name: str | None = field(
        default=None,
        metadata={
            "help": "Backbone: an alias (minilm, mpnet-base, smollm2, gemma3-270m), an HF model id "
            "or a local path; null = the task's default (minilm; smollm2 for xsum)."
        },
    )
    adapter: str = field(
        default=DEFAULT_ADAPTER,
        metadata={
            "help": "houlsby (default; lora where AdapterHub is not installed), pfeiffer, "
            "parallel, mam, prefix, lora, ia3, 'fusion' (AdapterFusion of the model.fuse runs' "
            "task adapters), or 'full' for full fine-tuning (no adapter, no pruning)."
        },
    )
    library: str = field(
        default="auto",
        metadata={
            "help": "Adapter library: 'auto' (AdapterHub; PEFT for lora/ia3, and for prefix "
            "without AdapterHub installed), 'adapterhub' or 'peft'."
        },
    )
    width: int | None = field(
        default=None,
        metadata={
            "help": "Adapter width (bottleneck size / LoRA rank / prefix length); "
            "null = the library's default."
        },
    )
    large_sparse: float = field(
        default=1.0,
        metadata={
            "help": "Large-Sparse factor K: widen the adapter K times and prune to sparsity "
            "1 - 1/K (same non-zero budget as the dense adapter). 1 = off."
        },
    )

    modules_to_save: list[str] | None = field(
        default=None,
        metadata={
            "help": "Base-model modules trained in full beside the adapter, as PEFT's "
            "modules_to_save (e.g. [pooler]: the classifier then reads a trained pooler instead "
            "of the frozen pretrained one); never pruned, saved with the adapter."
        },
    )
    fuse: list[str] | None = field(
        default=None,
        metadata={
            "help": "With adapter 'fusion': the finished runs (two or more, bottleneck adapters "
            "of one type) whose task adapters are fused."
        },
    )

    def __post_init__(self) -> None:
        from sparseadapter.adapters import ADAPTERS, resolve_library

        valid = (*ADAPTERS, FUSION, FULL_FINETUNE)
        if self.adapter not in valid:
            raise ConfigError(
                f"unknown adapter {shown(self.adapter)}; use one of: {', '.join(valid)}"
            )
        if self.is_fusion:
            self._check_fusion()
        elif self.fuse is not None:
            raise ConfigError("--fuse RUN ... goes with --adapter fusion: add it, or drop --fuse")
        elif not self.is_full_finetune:
            resolve_library(self.adapter, self.library)
        if not 1 <= self.large_sparse < math.inf:
            raise ConfigError(
                f"large_sparse must be a finite number >= 1 (1 = off), got {self.large_sparse}; "
                "e.g. 4"
            )
        if self.modules_to_save and (self.is_full_finetune or self.is_fusion):
            raise ConfigError(
                "modules_to_save trains modules beside an adapter: full fine-tuning trains "
                "every module already, and AdapterFusion takes none; drop it"
            )
        if self.is_full_finetune and (self.large_sparse != 1 or self.width is not None):
            raise ConfigError(
                "full fine-tuning has no adapter to widen: drop width/large_sparse, "
                "or choose an adapter"
            )

    def _check_fusion(self) -> None:
        if self.library not in ("auto", "adapterhub"):
            raise ConfigError(
                f"AdapterFusion is an AdapterHub adapter, not a {shown(self.library)} one: use "
                "library 'auto' or 'adapterhub'"
            )
        if self.width is not None or self.large_sparse != 1:
            raise ConfigError(
                "an AdapterFusion layer has no width to set or widen: drop width/large_sparse"
            )
        runs = [str(Path(run)) for run in self.fuse or []]
        if len(runs) < 2:
            raise ConfigError(
                f"AdapterFusion fuses at least two task adapters, got {len(runs)}: pass two or "
                "more finished runs with --fuse RUN RUN ..."
            )
        twice = sorted({run for run in runs if runs.count(run) > 1})
        if twice:
            raise ConfigError(f"--fuse names {twice[0]} twice: give each task adapter's run once")

    @property
    def is_full_finetune(self) -> bool:
        return self.adapter == FULL_FINETUNE

    @property
    def is_fusion(self) -> bool:
        return self.adapter == FUSION


@dataclass
class DataConfig:
    task: str = field(
        default="rte",
        metadata={
            "help": "GLUE (cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli), squad (SQuAD v1.1 "
            "extractive QA) or xsum (summarization with a decoder LM)."
        },
    )
    data_dir: str | None = field(
        default=None,
        metadata={
            "help": "Local data: the folder of GLUE-layout TSV folders (e.g. ../shared/data/glue), "
            "of the SQuAD JSON files or of the XSum JSON lines; null = the datasets hub."
        },
    )
    max_train_samples: int | None = field(
        default=None,
        metadata={
            "help": "Use only N training examples: the first N (GLUE), or N drawn with a fixed "
            "seed (squad questions, xsum pairs)."
        },
    )
    max_eval_samples: int | None = field(
        default=None,
        metadata={"help": "Use only N examples of each dev split (chosen as for training)."},
    )
    max_length: int | None = field(
        default=None,
        metadata={
            "help": "Truncate inputs to this many tokens; null = the task's default (128 GLUE, "
            "384 squad, 512 xsum)."
        },
    )
    train_file: str | None = field(
        default=None,
        metadata={"help": "text-classification: the training examples (.csv, .tsv or .jsonl)."},
    )
    validation_file: str | None = field(
        default=None,
        metadata={"help": "text-classification: the examples scored after each epoch."},
    )
    text_column: str = field(
        default="text", metadata={"help": "text-classification: the column of the text."}
    )
    text_pair_column: str | None = field(
        default=None,
        metadata={"help": "text-classification: the column of a second text (sentence pairs)."},
    )
    label_column: str = field(
        default="label", metadata={"help": "text-classification: the column of the label."}
    )
    label_names: list[str] | None = field(
        default=None,
        metadata={
            "help": "text-classification: the class names in id order ([] = regression); null = "
            "the sorted labels of the training file (written to the run's config)."
        },
    )
    doc_stride: int = field(
        default=128,
        metadata={"help": "squad: tokens shared by consecutive windows of a long context."},
    )
    max_answer_length: int = field(
        default=30, metadata={"help": "squad: the longest answer span predicted, in tokens."}
    )
    max_new_tokens: int = field(
        default=64, metadata={"help": "xsum: the most tokens generated (and trained) per summary."}
    )
    num_beams: int = field(
        default=1, metadata={"help": "xsum: beams of the beam search; 1 = greedy decoding."}
    )
    group_by_length: bool = field(
        default=False,
        metadata={
            "help": "Batch training examples of similar length together (random batch order): "
            "1.5-2.8x fewer tokens fed on GLUE, so faster on CPU; batches differ from plain "
            "shuffling."
        },
    )

    def __post_init__(self) -> None:
        from sparseadapter.tasks import task_class, task_name

        task = task_class(self.task)
        self.task = task_name(self.task)
        if self.max_length is None:
            self.max_length = task.default_max_length
        for name in (
            "max_train_samples",
            "max_eval_samples",
            "max_length",
            "doc_stride",
            "max_answer_length",
            "max_new_tokens",
            "num_beams",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"data.{name} must be a positive integer, got {value}")
        task.check(self)


@dataclass
class TrainConfig:
    epochs: int = field(default=3, metadata={"help": "Training epochs."})
    batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Examples per forward pass on each process; an optimizer step sees "
            "batch_size x grad_accum x processes; null = the task's default (32; 8 for xsum)."
        },
    )
    eval_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Examples per evaluation batch; null = the task's default (64; 16 for xsum)."
        },
    )
    lr: float | None = field(
        default=None,
        metadata={
            "help": f"Peak learning rate; null = {DEFAULT_LR_ADAPTER:g} for adapters, "
            f"{DEFAULT_LR_FULL:g} for full fine-tuning."
        },
    )
    lr_density_exponent: float = field(
        default=DEFAULT_LR_DENSITY_EXPONENT,
        metadata={
            "help": "alpha of the density-aware learning rate: a pruned adapter trains at lr x "
            "density^-alpha (density = kept / prunable weights), a dense one at lr; 0 = the "
            "same rate at every density. The default is what quality v2 measured on two tasks "
            "and two adapters (docs/benchmarks.md, 'Sparse adapters and the learning rate')."
        },
    )
    weight_decay: float = field(
        default=0.1, metadata={"help": "AdamW weight decay (the official SparseAdapter value)."}
    )
    warmup_ratio: float = field(
        default=0.06, metadata={"help": "Fraction of the steps with linear warm-up."}
    )
    grad_accum: int = field(default=1, metadata={"help": "Gradient accumulation steps."})
    mixed_precision: str = field(
        default="no", metadata={"help": "'no', 'bf16' (CPU or GPU) or 'fp16' (GPU only)."}
    )
    max_grad_norm: float = field(
        default=1.0, metadata={"help": "Gradient clipping norm; 0 = no clipping."}
    )
    seed: int = field(
        default=0, metadata={"help": "Seed for initialization, data order and pruning."}
    )
    eval_each_epoch: bool = field(
        default=True, metadata={"help": "Evaluate on the dev split(s) after every epoch."}
    )
    select: str = field(
        default="best",
        metadata={"help": "Which epoch's weights to keep: 'best' dev score or 'last'."},
    )
    report_to: str = field(
        default="none",
        metadata={
            "help": "Experiment tracking through accelerate's trackers: none, tensorboard, wandb "
            "or mlflow (several: comma-separated). Logs the loss and lr per step, dev metrics "
            "per epoch, the sparsity and parameter reports and the config; TensorBoard and "
            "MLflow files go to <output>/logs."
        },
    )
    checkpoint_every: int = field(
        default=100,
        metadata={
            "help": "Save a resumable checkpoint every N optimizer steps and after every epoch "
            "(sparseadapter train --resume RUN); 0 = no checkpoints."
        },
    )

    @property
    def trackers(self) -> list[str]:
        """The trackers ``report_to`` names ([] for none)."""
        names = [t.strip() for t in str(self.report_to).split(",") if t.strip()]
        return [] if names == ["none"] else names

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size", "grad_accum"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(
                    f"train.{name} must be a positive integer, got {getattr(self, name)}"
                )
        check_seed(self.seed, "train.seed")
        if self.lr is not None and not 0 < self.lr < math.inf:
            raise ConfigError(f"train.lr must be a number > 0, got {self.lr}")
        if not 0 <= self.lr_density_exponent < math.inf:
            raise ConfigError(
                f"train.lr_density_exponent must be a number >= 0 (0 = off), got "
                f"{self.lr_density_exponent}"
            )
        if not (0 <= self.weight_decay < math.inf and 0 <= self.max_grad_norm < math.inf):
            raise ConfigError("train.weight_decay and train.max_grad_norm must be numbers >= 0")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ConfigError(
                f"train.mixed_precision must be one of {', '.join(MIXED_PRECISION)}, "
                f"got {shown(self.mixed_precision)}"
            )
        if self.select not in SELECTIONS:
            raise ConfigError(f"train.select must be 'best' or 'last', got {shown(self.select)}")
        unknown = [t for t in self.trackers if t not in TRACKERS]
        if unknown or (self.report_to.strip() != "none" and not self.trackers):
            raise ConfigError(
                f"train.report_to must be none or one of {', '.join(TRACKERS)} (comma-separated), "
                f"got {shown(self.report_to)}"
            )
        if self.checkpoint_every < 0:
            raise ConfigError(
                f"train.checkpoint_every must be >= 0 (0 = no checkpoints), got "
                f"{self.checkpoint_every}"
            )
        if self.select == "best" and not self.eval_each_epoch:
            raise ConfigError(
                "train.select=best needs train.eval_each_epoch=true; or set train.select=last"
            )


_SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "prune": SparsityConfig,
    "train": TrainConfig,
}
_TOP_LEVEL = ("output",)


@dataclass
class RunConfig:
    """Everything that defines a run. ``prune`` is None for a dense run (``prune.method: none``)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    prune: SparsityConfig | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    output: str | None = field(
        default=None,
        metadata={"help": "Run folder; null = runs/<run name>, e.g. rte-houlsby-snip40-s1."},
    )

    def __post_init__(self) -> None:
        if self.output is not None and not Path(self.output).name:
            raise ConfigError(
                f"output {shown(self.output)} names no run folder: give one, e.g. runs/my-run"
            )
        from sparseadapter.tasks import task_class

        task = task_class(self.data.task)
        if self.model.name is None:
            self.model.name = task.default_model
        if self.train.batch_size is None:
            self.train.batch_size = task.default_batch_size
        if self.train.eval_batch_size is None:
            self.train.eval_batch_size = task.default_eval_batch_size
        if self.train.lr is None:
            self.train.lr = DEFAULT_LR_FULL if self.model.is_full_finetune else DEFAULT_LR_ADAPTER
        if self.model.is_full_finetune and self.prune is not None:
            raise ConfigError(
                "full fine-tuning is not pruned: drop the pruner (prune.method: none) "
                "or choose an adapter"
            )
        if self.model.large_sparse != 1 and self.prune is None:
            raise ConfigError(
                "Large-Sparse needs a pruner to bring the wide adapter back to the dense "
                "budget: add --pruner snip (or another method)"
            )

    @property
    def pruner(self) -> str:
        return NO_PRUNING if self.prune is None else self.prune.method

    def run_name(self) -> str:
        """A folder name from the run's defining options, e.g. ``rte-houlsby-snip40-s1``."""
        from sparseadapter.tasks import task_class

        parts = [task_class(self.data.task).run_label(self.data), self.model.adapter]
        if self.model.large_sparse != 1:
            parts.append(f"ls{self.model.large_sparse:g}")
        if self.prune is not None:
            parts.append(f"{self.prune.method}{self.prune.sparsity * 100:g}")
        elif not self.model.is_full_finetune:
            parts.append("dense")
        parts.append(f"s{self.train.seed}")
        return "-".join(parts)

    def output_dir(self) -> Path:
        return Path(self.output) if self.output else Path("runs") / self.run_name()

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": asdict(self.model),
            "data": asdict(self.data),
            "prune": {"method": NO_PRUNING} if self.prune is None else self.prune.to_dict(),
            "train": asdict(self.train),
            "output": self.output,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build and validate a run from a nested dict (sections may be partial)."""
        if not isinstance(data, dict):
            raise ConfigError(
                f"a run config must be a mapping of sections, got {type(data).__name__}"
            )
        unknown = set(data) - set(_SECTIONS) - set(_TOP_LEVEL)
        if unknown:
            raise ConfigError(
                f"unknown config section(s) {', '.join(sorted(unknown))}; valid: "
                f"{', '.join([*_SECTIONS, *_TOP_LEVEL])}"
            )
        sections = {}
        for name in _SECTIONS:
            values = data.get(name) or {}
            if not isinstance(values, dict):
                raise ConfigError(
                    f"config section {shown(name)} must be a mapping, got {shown(values)}"
                )
            for key in values:
                _check_key(name, key)
            sections[name] = values
        model = _build(ModelConfig, "model", sections["model"])
        train = _build(TrainConfig, "train", sections["train"])
        output = data.get("output")
        if output is not None and not isinstance(output, str):
            raise ConfigError(f"output must be a folder path, got {shown(output)}")
        return cls(
            model=model,
            data=_build(DataConfig, "data", sections["data"]),
            prune=_build_prune(sections["prune"], model, train),
            train=train,
            output=output,
        )


def _build_prune(
    values: dict[str, Any], model: ModelConfig, train: TrainConfig
) -> SparsityConfig | None:
    values = dict(values)
    method = values.get("method", NO_PRUNING)
    sparsity = _coerce("prune.sparsity", values.get("sparsity"), float | None)
    if method == NO_PRUNING:
        if sparsity not in (None, 0, 0.0):
            raise ConfigError(
                f"sparsity {sparsity} given without a pruner: add --pruner snip "
                "(or random, magnitude, grasp, synflow)"
            )
        return None
    if model.large_sparse != 1:
        implied = large_sparse_sparsity(model.large_sparse)
        if sparsity is not None and abs(sparsity - implied) > 1e-9:
            raise ConfigError(
                f"Large-Sparse {model.large_sparse:g} fixes the sparsity at {implied:g}, "
                f"got sparsity {sparsity}: drop --sparsity"
            )
        sparsity = implied
    values["sparsity"] = DEFAULT_SPARSITY if sparsity is None else sparsity
    if values.get("seed") is None:
        values["seed"] = train.seed
    hints = typing.get_type_hints(SparsityConfig)
    scalars = {
        k: _coerce(f"prune.{k}", v, hints[k]) for k, v in values.items() if _scalar(hints[k])
    }
    return SparsityConfig.from_dict({**values, **scalars})


def _scalar(hint: Any) -> bool:
    """A hint ``_coerce`` checks: int, float, str or bool, or a union of them and None."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return all(t in (int, float, str, bool, type(None)) for t in typing.get_args(hint))
    return hint in (int, float, str, bool)


def _check_key(section: str, key: str) -> None:
    valid = [f.name for f in fields(_SECTIONS[section])]
    if key not in valid:
        raise ConfigError(f"unknown key {section}.{key}; valid {section} keys: {', '.join(valid)}")


def _build(cls: type, section: str, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    checked = {key: _coerce(f"{section}.{key}", value, hints[key]) for key, value in values.items()}
    return cls(**checked)


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """``value`` checked against a simple type hint (int, float, str, bool, X | None)."""
    allowed = typing.get_args(hint) or (hint,)
    if value is not None and list[str] in allowed:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{name} must be a list of strings, got {shown(value)}")
        return list(value)
    if value is None:
        if type(None) in allowed:
            return None
        raise ConfigError(f"{name} must not be null")
    if isinstance(value, list) and any(typing.get_origin(t) is list for t in allowed):
        if all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
            return [str(v) for v in value]
    elif isinstance(value, bool):
        if bool in allowed:
            return value
        if str in allowed:  # YAML 1.1 reads an unquoted no / off (yes / on) as a boolean
            return "yes" if value else "no"
    elif isinstance(value, int) and int in allowed:
        return value
    elif isinstance(value, (int, float)) and float in allowed:
        return float(value)
    elif isinstance(value, str) and str in allowed:
        return value
    elif isinstance(value, str):  # YAML reads "1e-3" as a string
        for number in (int, float):
            if number in allowed:
                try:
                    return number(value)
                except ValueError:
                    pass
    expected = " or ".join(
        "a list of names" if typing.get_origin(t) is list else t.__name__
        for t in allowed
        if t is not type(None)
    )
    raise ConfigError(f"{name} must be {expected}, got {shown(value)}")


def valid_keys() -> list[str]:
    """Every ``section.key`` accepted by ``--set`` and YAML run configs."""
    keys = [f"{s}.{f.name}" for s, cls in _SECTIONS.items() for f in fields(cls)]
    return [*keys, *_TOP_LEVEL]


def parse_assignment(assignment: str) -> tuple[str, Any]:
    """``section.key=value`` as (path, value), the value parsed as YAML."""
    path, sep, raw = assignment.partition("=")
    path = path.strip()
    if not sep or not path:
        raise ConfigError(
            f"--set expects section.key=value, got {shown(assignment)}; e.g. train.epochs=3"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return path, value


def set_value(data: dict[str, Any], assignment: str) -> None:
    """Apply one ``section.key=value`` override to a nested config dict (value parsed as YAML)."""
    set_key(data, *parse_assignment(assignment))


def set_key(data: dict[str, Any], path: str, value: Any) -> None:
    """Set ``section.key`` (or a top-level key) in a nested config dict, checking the key."""
    if path in _TOP_LEVEL:
        data[path] = value
        return
    section, _, key = path.partition(".")
    if section not in _SECTIONS or not key:
        raise ConfigError(f"unknown key {shown(path)}; valid keys: {', '.join(valid_keys())}")
    _check_key(section, key)
    config_section(data, section)[key] = value


def config_section(data: dict[str, Any], name: str) -> dict[str, Any]:
    """``data[name]`` as a mapping to fill: created if missing or empty (``train:`` alone in a
    YAML file is null), ConfigError if it is something else."""
    values = data.get(name)
    if values is None:
        values = data[name] = {}
    if not isinstance(values, dict):
        raise ConfigError(f"config section {shown(name)} must be a mapping, got {shown(values)}")
    return values


MAX_YAML_VALUES = 100_000  # far above any real config; YAML aliases can expand past it


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML says last wins)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(
                    f"key {shown(key)} is given twice (lines {seen[key]} and "
                    f"{key_node.start_mark.line + 1}) in {self.name}; keep one"
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _expanded_size(value: Any, budget: int) -> int:
    """How many values ``value`` holds with every alias expanded, counting up to ``budget``."""
    count, stack = 0, [value]
    while stack and count <= budget:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file's top-level mapping; a missing or malformed file is a ConfigError."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder; pass a YAML file")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; check the path")
    try:
        text = path.read_text(encoding="utf-8")
        loader = _StrictLoader(text)
        loader.name = str(path)
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        raise ConfigError(
            f"{path} is not valid YAML ({' '.join(str(err).split())}); fix the file"
        ) from None
    except UnicodeDecodeError as err:
        raise ConfigError(not_utf8_message(path, err)) from None
    if _expanded_size(data, MAX_YAML_VALUES) > MAX_YAML_VALUES:
        raise ConfigError(
            f"{path} expands to more than {MAX_YAML_VALUES:,} values (nested YAML aliases?); "
            "write the config out without them"
        )
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config sections")
    return data


def resolve(
    config_file: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """A run config from ``base`` (e.g. a saved run's config), then a YAML file, then
    ``section.key`` flags, then ``--set`` overrides.

    Flags and overrides that fix what a file would otherwise clash with replace the file's value
    (:func:`drop_implied`, the rule sweeps use too): full fine-tuning drops its pruner, width and
    Large-Sparse factor, and no pruner or Large-Sparse K drops its sparsity, unless the command
    line sets those too."""
    data = {name: dict(v) if isinstance(v, dict) else v for name, v in (base or {}).items()}
    for name, values in (load_yaml(config_file) if config_file else {}).items():
        if isinstance(values, dict) and isinstance(data.get(name), dict):
            data[name].update(values)
        else:
            data[name] = values
    given = dict(flags or {})
    given.update(parse_assignment(assignment) for assignment in overrides or [])
    for path, value in given.items():
        set_key(data, path, value)
    drop_implied(data, chosen=given, keep=given)
    return RunConfig.from_dict(data)


def drop_implied(
    data: dict[str, Any], chosen: Mapping[str, Any] | None = None, keep: Container[str] = ()
) -> None:
    """Drop, in place, the values that a run's choices make meaningless: full fine-tuning has
    no pruner, width or Large-Sparse factor; no pruner, or Large-Sparse K (whose sparsity is
    1 - 1/K), has no sparsity of its own.

    Only choices named in ``chosen`` (``section.key`` -> value; None: every value in ``data``)
    drop anything, and keys in ``keep`` are never dropped: a value given on the same command
    line as a choice that contradicts it is a clash, reported when the config is built."""
    model, prune = config_section(data, "model"), config_section(data, "prune")
    current = {
        "model.adapter": model.get("adapter"),
        "prune.method": prune.get("method", NO_PRUNING),
        "model.large_sparse": model.get("large_sparse", 1),
    }
    chose = current if chosen is None else {k: v for k, v in chosen.items() if k in current}

    def drop(section: dict[str, Any], path: str, key: str) -> None:
        if path not in keep:
            section.pop(key, None)

    if chose.get("model.adapter") == FULL_FINETUNE:
        for key in list(prune):
            drop(prune, f"prune.{key}", key)
        drop(model, "model.width", "width")
        drop(model, "model.large_sparse", "large_sparse")
    if chose.get("prune.method") == NO_PRUNING or chose.get("model.large_sparse", 1) != 1:
        drop(prune, "prune.sparsity", "sparsity")


def save_yaml(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")


def changed_keys(old: RunConfig, new: RunConfig) -> list[str]:
    """``section.key: old -> new`` for every key (but ``output``) whose value differs."""
    before, after = old.to_dict(), new.to_dict()
    changes = []
    for section in _SECTIONS:
        keys = dict.fromkeys([*before[section], *after[section]])
        for key in keys:
            a, b = before[section].get(key), after[section].get(key)
            if a != b:
                changes.append(f"{section}.{key}: {shown(a)} -> {shown(b)}")
    return changes
