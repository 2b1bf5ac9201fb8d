"""Tasks behind one interface (:class:`Task`): the GLUE tasks, SQuAD v1.1 and XSum.

``get_task(name)`` is the one place a task name is resolved."""

from __future__ import annotations

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

TASK_NAMES = (*GLUE_TASKS, "squad", "xsum")


def get_task(name: str) -> Task:
    """The task called ``name`` (GLUE names in any case, with or without a dash: "SST-2")."""
    key = str(name).lower().replace("-", "").replace("_", "")
    if key in GLUE_TASKS:
        from sparseadapter.tasks.classification import GlueTask

        return GlueTask(GLUE_TASKS[key])
    if key == "squad":
        from sparseadapter.tasks.squad import SquadTask

        return SquadTask()
    if key == "xsum":
        from sparseadapter.tasks.xsum import XsumTask

        return XsumTask()
    raise DataError(f"unknown task {shown(name)}; use one of: {', '.join(TASK_NAMES)}")


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
    "load_glue",
]
