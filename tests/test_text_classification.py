"""--task text-classification: a user's own CSV / TSV / JSON lines data."""

import json

import pytest
import yaml

from sparseadapter.cli import main
from sparseadapter.errors import ConfigError, DataError
from sparseadapter.evaluate import evaluate_run
from sparseadapter.runconfig import DataConfig, RunConfig
from sparseadapter.tasks import get_task
from sparseadapter.train import train

ROWS = [("a fine film", "great story", "pos"), ("dull", "too long", "neg"), ("fun", "loved it", "pos"),
        ("weak", "boring plot", "neg"), ("superb", "moving", "pos"), ("bad", "awful acting", "neg")]  # fmt: skip


def write(path, rows, columns=("text", "pair", "label")):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(dict(zip(columns, r))) + "\n" for r in rows))
    else:
        sep = "," if path.suffix == ".csv" else "\t"
        path.write_text("\n".join(sep.join(map(str, r)) for r in [columns, *rows]) + "\n")
    return str(path)


def data_config(train_file, validation_file, **options):
    return DataConfig(
        task="text-classification",
        train_file=train_file,
        validation_file=validation_file,
        **options,
    )


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl"])
def test_files_of_each_format_map_string_labels_in_sorted_order(tmp_path, suffix):
    train_file = write(tmp_path / f"train{suffix}", ROWS)
    data = data_config(train_file, train_file, text_pair_column="pair")
    task = get_task("text-classification", data)
    assert data.label_names == ["neg", "pos"] and task.metrics == ("accuracy", "f1")
    examples = task.load("train", None, 3)
    assert [(e.text_a, e.text_b, e.label) for e in examples] == [
        ("a fine film", "great story", 1),
        ("dull", "too long", 0),
        ("fun", "loved it", 1),
    ]


def test_numeric_labels_sort_numerically_and_fractions_mean_regression(tmp_path):
    classes = write(tmp_path / "c.csv", [("x", "", 10), ("y", "", 9), ("z", "", 2)])
    data = data_config(classes, classes)
    task = get_task("text-classification", data)
    assert data.label_names == ["2", "9", "10"] and task.metrics == ("accuracy", "f1_macro")
    scores = write(tmp_path / "s.csv", [("x", "", 0.5), ("y", "", 3), ("z", "", 4.25)])
    data = data_config(scores, scores)
    task = get_task("text-classification", data)
    assert data.label_names == [] and task.is_regression and task.main_metric == "pearson"
    assert [e.label for e in task.load("train", None, None)] == [0.5, 3.0, 4.25]


def test_bad_data_gets_one_line_errors(tmp_path):
    train_file = write(tmp_path / "train.csv", ROWS)
    with pytest.raises(
        DataError, match=r"no column 'sentence' \(found: text, pair, label\).*--text-column"
    ):
        get_task("text-classification", data_config(train_file, train_file, text_column="sentence"))
    one_class = write(tmp_path / "one.csv", [("a", "", "pos"), ("b", "", "pos")])
    with pytest.raises(DataError, match="single label 'pos'.*at least two classes"):
        get_task("text-classification", data_config(one_class, one_class))
    unseen = write(tmp_path / "dev.csv", [("a", "", "pos"), ("b", "", "neutral")])
    task = get_task("text-classification", data_config(train_file, unseen))
    with pytest.raises(
        DataError, match="label 'neutral' in row 3 of .* does not occur in the training file"
    ):
        task.load("validation", None, None)
    with pytest.raises(DataError, match="unknown file type '.xlsx'"):
        get_task("text-classification", data_config(str(tmp_path / "a.xlsx"), train_file))
    with pytest.raises(ConfigError, match="needs --validation-file"):
        DataConfig(task="text-classification", train_file=train_file)


def test_run_is_named_after_the_data_and_keeps_its_labels(tmp_path, tiny_bert, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_file = write(tmp_path / "reviews.csv", ROWS * 3)
    dev_file = write(tmp_path / "dev.csv", ROWS[:4])
    code = main(["train", "--task", "text-classification", "--train-file", train_file,
                 "--validation-file", dev_file, "--text-pair-column", "pair", "--model", tiny_bert,
                 "--adapter", "lora", "--epochs", "1", "--quiet"])  # fmt: skip
    assert code == 0
    run = tmp_path / "runs" / "reviews-lora-dense-s0"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["label_names"] == ["neg", "pos"]
    final = json.loads((run / "final.json").read_text())
    assert set(final["dev"]["validation"]) == {"accuracy", "f1", "collapsed"}
    # the saved label order wins over the training file's, which may change afterwards
    write(tmp_path / "reviews.csv", [("x", "", "zzz"), ("y", "", "aaa")], ("text", "pair", "label"))
    assert evaluate_run(run)["dev"] == final["dev"]


def test_a_run_config_builds_the_task_from_its_files(tmp_path, tiny_bert):
    train_file = write(tmp_path / "train.jsonl", ROWS)
    config = RunConfig.from_dict(
        {
            "model": {"name": tiny_bert, "adapter": "lora"},
            "data": {"task": "text-classification", "train_file": train_file,
                     "validation_file": train_file, "text_pair_column": "pair"},
            "prune": {"method": "magnitude", "sparsity": 0.5},
            "train": {"epochs": 1},
            "output": str(tmp_path / "run"),
        }
    )  # fmt: skip
    final = train(config, quiet=True)
    assert final["task"] == "text-classification" and final["examples"]["train"] == 6
