"""Tasks behind one interface (:class:`Task`): the GLUE tasks, SQuAD v1.1 and XSum.

``get_task(name)`` is the one place a task name is resolved."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sparseadapter.errors import DataError, shown
from sparseadapter.tasks.base import (
    CAUSAL_LM,
    HEADS,
    QUESTION_ANSWERING,
    SEQUENCE_CLASSIFICATION,
    EvalSet,
    Task,
)
from sparseadapter.tasks.glue import GLUE_TASKS, Example, TaskSpec, compute_metrics, load_glue

if TYPE_CHECKING:
    from sparseadapter.runconfig import DataConfig

TEXT_CLASSIFICATION = "text-classification"
TASK_NAMES = (*GLUE_TASKS, "squad", "xsum", TEXT_CLASSIFICATION)


def task_class(name: str) -> type[Task]:
    """The class of the task called ``name`` (GLUE names in any case, with or without a dash:
    "SST-2"); its class attributes are the task's defaults."""
    key = _key(name)
    if key in GLUE_TASKS:
        from sparseadapter.tasks.classification import GlueTask

        return GlueTask
    if key == "squad":
        from sparseadapter.tasks.squad import SquadTask

        return SquadTask
    if key == "xsum":
        from sparseadapter.tasks.xsum import XsumTask

        return XsumTask
    if key == _key(TEXT_CLASSIFICATION):
        from sparseadapter.tasks.classification import TextClassificationTask

        return TextClassificationTask
    raise DataError(f"unknown task {shown(name)}; use one of: {', '.join(TASK_NAMES)}")


def task_name(name: str) -> str:
    """The canonical name of a task ("SST-2" -> "sst2")."""
    key = _key(name)
    if key in GLUE_TASKS:
        return key
    task_class(name)
    return {_key(n): n for n in TASK_NAMES}[key]


def get_task(name: str, data: DataConfig | None = None) -> Task:
    """The task called ``name``; ``data`` (the run's data options) is needed by tasks built
    from the user's files (text-classification)."""
    cls = task_class(name)
    key = _key(name)
    if key in GLUE_TASKS:
        return cls(GLUE_TASKS[key])
    if key == _key(TEXT_CLASSIFICATION):
        if data is None:
            raise DataError("the text-classification task is built from the run's data options")
        return cls(data)
    return cls()


def _key(name: str) -> str:
    return str(name).lower().replace("-", "").replace("_", "")


__all__ = [
    "CAUSAL_LM",
    "GLUE_TASKS",
    "HEADS",
    "QUESTION_ANSWERING",
    "SEQUENCE_CLASSIFICATION",
    "TASK_NAMES",
    "EvalSet",
    "Example",
    "Task",
    "TaskSpec",
    "compute_metrics",
    "get_task",
    "task_class",
    "task_name",
    "load_glue",
]
