"""--report-to: a run's loss, learning rate, dev metrics, sparsity and parameter reports and
config reach the experiment tracker (TensorBoard, offline)."""

from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sparseadapter.cli import main
from sparseadapter.errors import ConfigError
from sparseadapter.runconfig import resolve


def test_tensorboard_gets_loss_dev_metric_and_sparsity(tiny_bert, tiny_glue, tmp_path):
    run = tmp_path / "run"
    argv = [
        "train", "--model", tiny_bert, "--task", "rte", "--data-dir", str(tiny_glue),
        "--max-length", "32", "--epochs", "2", "--batch-size", "8", "--adapter", "lora",
        "--pruner", "snip", "--scoring-examples", "8", "--report-to", "tensorboard",
        "--output", str(run), "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    events = sorted((run / "logs").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file in the run's logs/"
    scalars: dict[str, list] = {}
    for path in events:
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend(accumulator.Scalars(tag))
    steps = len(scalars["train/loss"])
    assert steps == 2 * 3  # 24 examples in batches of 8, two epochs: one value per step
    assert all(0 < e.value < 10 for e in scalars["train/loss"])
    assert [round(e.value, 6) for e in scalars["train/lr"]] != [
        scalars["train/lr"][0].value
    ] * steps
    assert len(scalars["dev/validation/accuracy"]) == 2
    achieved = scalars["sparsity/achieved"][0].value
    assert abs(achieved - 0.4) < 0.01
    kept = [t for t in scalars if t.startswith("sparsity/kept_fraction/")]
    assert kept and all(0 < scalars[t][0].value <= 1 for t in kept)
    assert scalars["parameters/trainable"][0].value > 0


def test_without_report_to_no_logs_are_written(tiny_bert, tiny_glue, tmp_path):
    run = tmp_path / "run"
    argv = [
        "train", "--model", tiny_bert, "--task", "rte", "--data-dir", str(tiny_glue),
        "--max-length", "32", "--epochs", "1", "--adapter", "lora", "--output", str(run), "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    assert not (run / "logs").exists()


@pytest.mark.parametrize("value", ["tensorbord", "none,wandb", ""])
def test_unknown_trackers_are_refused(value):
    with pytest.raises(ConfigError, match="train.report_to must be none or one of tensorboard"):
        resolve(flags={"train.report_to": value})
