"""Benchmark tasks: data loading and metrics."""

from sparseadapter.tasks.glue import (
    GLUE_TASKS,
    Example,
    TaskSpec,
    compute_metrics,
    get_task,
    load_glue,
)

__all__ = ["GLUE_TASKS", "Example", "TaskSpec", "compute_metrics", "get_task", "load_glue"]
