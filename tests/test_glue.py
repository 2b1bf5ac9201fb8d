"""GLUE loading (local TSVs and a faked hub) and metrics checked against hand computations."""

import math
import sys
import types

import pytest

from sparseadapter.errors import ConfigError, DataError
from sparseadapter.tasks.glue import (
    GLUE_TASKS,
    Example,
    compute_metrics,
    glue_spec,
    is_collapsed,
    load_glue,
)

# (task, split, size from the data README, first example of the file)
LOCAL_SPLITS = [
    ("cola", "train", 8551, Example("Our friends won't buy this analysis, let alone the next one we propose.", None, 1)),
    ("cola", "validation", 1043, Example("The sailors rode the breeze clear of the rocks.", None, 1)),
    ("sst2", "train", 67349, Example("when are bears bears and ", None, 1)),
    ("sst2", "validation", 872, Example("it 's a charming and often affecting journey . ", None, 1)),
    ("mrpc", "train", 3668, None),
    ("mrpc", "validation", 408, None),
    ("stsb", "train", 5749, Example("A plane is taking off.", "An air plane is taking off.", 5.0)),
    ("stsb", "validation", 1500, Example("A man with a hard hat is dancing.", "A man wearing a hard hat is dancing.", 5.0)),
    ("rte", "train", 2490, Example("No Weapons of Mass Destruction Found in Iraq Yet.", "Weapons of Mass Destruction Found in Iraq.", 1)),
    ("rte", "validation", 277, None),
    ("wnli", "train", 635, Example("I stuck a pin through a carrot. When I pulled the pin out, it had a hole.", "The carrot had a hole.", 1)),
    ("wnli", "validation", 71, Example("The drain is clogged with hair. It has to be cleaned.", "The hair has to be cleaned.", 0)),
]  # fmt: skip


@pytest.mark.parametrize(("task", "split", "size", "first"), LOCAL_SPLITS)
def test_local_split_sizes_labels_and_first_example(glue_dir, task, split, size, first):
    examples = load_glue(task, split, glue_dir)
    spec = glue_spec(task)
    assert len(examples) == size
    if first is not None:
        assert examples[0] == first
    assert all((e.text_b is None) == (len(spec.text_keys) == 1) for e in examples)
    labels = [e.label for e in examples]
    if spec.is_regression:
        assert all(isinstance(y, float) and 0.0 <= y <= 5.0 for y in labels)
        assert min(labels) == 0.0 and max(labels) == 5.0 and len(set(labels)) > 50
    else:
        assert all(type(y) is int for y in labels)
        assert set(labels) == {0, 1}


def test_local_text_columns_mrpc_and_rte_dev(glue_dir):
    mrpc = load_glue("mrpc", "train", glue_dir)[0]
    assert mrpc.text_a.startswith("Amrozi accused his brother")
    assert mrpc.text_b.startswith("Referring to him as only")
    assert mrpc.label == 1
    rte = load_glue("RTE", "validation", glue_dir)[0]
    assert rte.text_a.startswith("Dana Reeve, the widow of the actor")
    assert rte.text_b == "Christopher Reeve had an accident."
    assert rte.label == 1  # "not_entailment"


def test_max_samples_takes_the_first_examples(glue_dir):
    full = load_glue("rte", "train", glue_dir)
    assert load_glue("rte", "train", glue_dir, max_samples=5) == full[:5]
    assert load_glue("wnli", "validation", glue_dir, max_samples=10_000) == load_glue(
        "wnli", "validation", glue_dir
    )
    with pytest.raises(ConfigError, match="max_samples"):
        load_glue("rte", "train", glue_dir, max_samples=0)


def test_glue_spec_aliases_and_unknown():
    assert glue_spec("SST-2") is GLUE_TASKS["sst2"]
    assert glue_spec("sts-b").is_regression
    assert glue_spec("MNLI").dev_splits == ("validation_matched", "validation_mismatched")
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"}
    for spec in GLUE_TASKS.values():
        assert spec.main_metric in spec.metrics
        assert (spec.label_names is None) == spec.is_regression
    with pytest.raises(DataError, match="unknown GLUE task 'squad'.*cola, sst2"):
        glue_spec("squad")


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_mnli_qnli_mrpc_layouts_from_tsv(tmp_path):
    _write(
        tmp_path / "MNLI" / "dev_mismatched.tsv",
        "index\tsentence1\tsentence2\tlabel1\tgold_label\n"
        '0\tA "quoted\tB\tneutral\tcontradiction\n'
        "1\tC\tD\tneutral\tneutral\n",
    )
    examples = load_glue("mnli", "validation_mismatched", tmp_path)
    assert examples == [Example('A "quoted', "B", 2), Example("C", "D", 1)]
    _write(
        tmp_path / "QNLI" / "train.tsv", "index\tquestion\tsentence\tlabel\n0\tQ?\tS.\tentailment\n"
    )
    assert load_glue("qnli", "train", tmp_path) == [Example("Q?", "S.", 0)]
    _write(  # the original MRPC files start with a byte-order mark
        tmp_path / "MRPC" / "dev.tsv",
        "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t1\t2\tX\tY\n",
    )
    assert load_glue("mrpc", "validation", tmp_path) == [Example("X", "Y", 0)]


def test_error_missing_data_dir_and_task_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_glue("rte", "train", tmp_path / "nowhere")
    with pytest.raises(DataError, match="no RTE/ folder"):
        load_glue("rte", "train", tmp_path)


def test_error_missing_split_file_names_expected_path(tmp_path):
    (tmp_path / "MNLI").mkdir()
    with pytest.raises(DataError) as err:
        load_glue("mnli", "validation_matched", tmp_path)
    assert str(tmp_path / "MNLI" / "dev_matched.tsv") in str(err.value)


def test_error_unknown_split(tmp_path):
    with pytest.raises(DataError, match="use one of: train, validation$"):
        load_glue("rte", "test", tmp_path)


def test_error_header_lacks_columns(tmp_path):
    path = _write(tmp_path / "RTE" / "train.tsv", "index\tsentence1\tlabel\n0\ta\tentailment\n")
    with pytest.raises(DataError) as err:
        load_glue("rte", "train", tmp_path)
    assert "lacks the column(s) sentence2 in" in str(err.value) and str(path) in str(err.value)


def test_error_row_with_too_few_fields(tmp_path):
    _write(tmp_path / "CoLA" / "train.tsv", "gj04\t1\t\tGood.\ngj04\t0\n")
    with pytest.raises(DataError, match="line 2 of .*train.tsv has 2 tab-separated fields"):
        load_glue("cola", "train", tmp_path)


def test_error_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "SST-2" / "train.tsv"
    path.parent.mkdir(parents=True)
    path.write_bytes("sentence\tlabel\ncafé .\t1\n".encode("latin-1"))
    with pytest.raises(
        DataError, match=r"train\.tsv is not UTF-8 text \(byte 0xe9.*save it as UTF-8"
    ):
        load_glue("sst2", "train", tmp_path)


def test_error_unknown_label_names_value_file_and_line(tmp_path):
    _write(tmp_path / "SST-2" / "dev.tsv", "sentence\tlabel\nfine .\t1\nbad .\tnegative\n")
    with pytest.raises(DataError, match=r"unknown label 'negative' on line 3 of .*SST-2.dev\.tsv"):
        load_glue("sst2", "validation", tmp_path)
    _write(tmp_path / "STS-B" / "train.tsv", "sentence1\tsentence2\tscore\na\tb\tn/a\n")
    with pytest.raises(DataError, match="unknown label 'n/a' on line 2.*a finite number"):
        load_glue("stsb", "train", tmp_path)


@pytest.mark.parametrize("score", ["nan", "inf", "-Infinity"])
def test_error_non_finite_regression_label(tmp_path, score):
    _write(
        tmp_path / "STS-B" / "train.tsv", f"sentence1\tsentence2\tscore\na\tb\t1.5\nc\td\t{score}\n"
    )
    with pytest.raises(DataError, match=f"unknown label '{score}' on line 3.*a finite number"):
        load_glue("stsb", "train", tmp_path)


def test_error_empty_split(tmp_path):
    _write(tmp_path / "WNLI" / "train.tsv", "index\tsentence1\tsentence2\tlabel\n")
    with pytest.raises(DataError, match="has no examples"):
        load_glue("wnli", "train", tmp_path)
    _write(tmp_path / "WNLI" / "dev.tsv", "")
    with pytest.raises(DataError, match="lacks the column"):
        load_glue("wnli", "validation", tmp_path)


# Metrics. Binary case used below: references 1,1,1,0,0,0 / predictions 1,1,0,1,0,0
# -> TP=2, FN=1, FP=1, TN=2.
REFS = [1, 1, 1, 0, 0, 0]
PREDS = [1, 1, 0, 1, 0, 0]


def test_mrpc_f1_and_accuracy_by_hand():
    tp, fn, fp, tn = 2, 1, 1, 2
    result = compute_metrics("mrpc", PREDS, REFS)
    assert result == pytest.approx(
        {"f1": 2 * tp / (2 * tp + fp + fn), "accuracy": (tp + tn) / (tp + tn + fp + fn)}
    )
    assert all(type(v) is float for v in result.values())


def test_cola_matthews_correlation_by_hand():
    tp, fn, fp, tn = 2, 1, 1, 2
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert compute_metrics("cola", PREDS, REFS) == {"matthews_correlation": pytest.approx(mcc)}
    assert compute_metrics("cola", [1] * 6, REFS) == {"matthews_correlation": 0.0}


def test_accuracy_tasks_by_hand():
    assert compute_metrics("mnli", [0, 1, 2, 2, 1], [0, 1, 2, 0, 0]) == {"accuracy": 0.6}
    assert compute_metrics("rte", PREDS, REFS) == {"accuracy": pytest.approx(4 / 6)}


def _pearson(x, y):
    mx, my = sum(x) / len(x), sum(y) / len(y)
    cov = sum((a - mx) * (b - my) for a, b in zip(x, y))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y))


def test_stsb_pearson_and_spearman_by_hand():
    preds = [0.5, 1.0, 2.0, 8.0]  # ranks 1 2 3 4
    refs = [1.0, 3.0, 2.0, 4.0]  # ranks 1 3 2 4: sum d^2 = 2
    spearman = 1 - 6 * 2 / (4 * (4**2 - 1))
    result = compute_metrics("sts-b", preds, refs)
    assert result == pytest.approx({"pearson": _pearson(preds, refs), "spearmanr": spearman})
    assert result["pearson"] != pytest.approx(result["spearmanr"])


def test_stsb_constant_predictions_give_zero_correlation():
    result = compute_metrics("stsb", [[2.5], [2.5], [2.5]], [1.0, 3.0, 4.5])
    assert result == {"pearson": 0.0, "spearmanr": 0.0}


def test_stsb_non_finite_predictions_score_zero_and_count_as_collapsed():
    diverged = [1.0, float("nan"), 4.0]  # e.g. an fp16 overflow: a NaN score would beat nothing
    assert compute_metrics("stsb", diverged, [1.0, 3.0, 4.5]) == {"pearson": 0.0, "spearmanr": 0.0}
    assert is_collapsed("stsb", diverged, [1.0, 3.0, 4.5])


def test_collapse_is_one_class_or_a_regression_spread_under_a_fifth_of_the_labels():
    assert is_collapsed("cola", [1, 1, 1], [0, 1, 1])
    assert not is_collapsed("cola", [1, 0, 1], [1, 1, 1])
    refs = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert is_collapsed("stsb", [2.5] * 6, refs)
    near_mean = [2.5 + 0.05 * (r - 2.5) for r in refs]  # perfectly correlated, but 5% of the spread
    assert compute_metrics("stsb", near_mean, refs)["pearson"] == pytest.approx(1.0)
    assert is_collapsed("stsb", near_mean, refs)
    assert not is_collapsed("stsb", [2.5 + 0.3 * (r - 2.5) for r in refs], refs)
    with pytest.raises(DataError, match="same length"):
        is_collapsed("stsb", [1.0], refs)


def test_metrics_reject_mismatched_or_empty_inputs():
    with pytest.raises(DataError, match="same length"):
        compute_metrics("rte", [0, 1], [0, 1, 1])
    with pytest.raises(DataError, match="same length"):
        compute_metrics("stsb", [], [])
    with pytest.raises(DataError, match="class id"):
        compute_metrics("rte", [[0.1, 0.9], [0.8, 0.2]], [1, 0])


# Hub path: datasets.load_dataset replaced by an in-memory fake.
HUB_ROWS = {
    "mnli": {"premise": ["p0", "p1", "p2"], "hypothesis": ["h0", "h1", "h2"], "label": [2, 0, 1]},
    "sst2": {"sentence": ["good", "bad"], "label": [1, 0]},
    "stsb": {"sentence1": ["a"], "sentence2": ["b"], "label": [3.2]},
}


class HubSplit:
    """The part of ``datasets.Dataset`` that hub loading uses: len, select, a column by name."""

    def __init__(self, columns: dict[str, list]):
        self.columns = columns

    def __len__(self) -> int:
        return len(self.columns["label"])

    def select(self, indices) -> "HubSplit":
        return HubSplit({k: [v[i] for i in indices] for k, v in self.columns.items()})

    def __getitem__(self, column: str) -> list:
        return self.columns[column]


def fake_datasets(monkeypatch, load_dataset) -> None:
    """A stand-in ``datasets`` package (installed or not): no test reaches the hub."""
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))


@pytest.fixture
def fake_hub(monkeypatch):
    calls = []

    def load_dataset(path, name, split):
        calls.append((path, name, split))
        return HubSplit(HUB_ROWS[name])

    fake_datasets(monkeypatch, load_dataset)
    return calls


def test_hub_maps_columns_and_labels(fake_hub):
    assert load_glue("MNLI", "validation_matched", max_samples=2) == [
        Example("p0", "h0", 2),
        Example("p1", "h1", 0),
    ]
    assert load_glue("sst-2", "train") == [Example("good", None, 1), Example("bad", None, 0)]
    (stsb,) = load_glue("stsb", "validation")
    assert stsb == Example("a", "b", 3.2) and type(stsb.label) is float
    assert fake_hub == [
        ("nyu-mll/glue", "mnli", "validation_matched"),
        ("nyu-mll/glue", "sst2", "train"),
        ("nyu-mll/glue", "stsb", "validation"),
    ]


def test_hub_unreachable_is_a_data_error(monkeypatch):
    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (OfflineModeIsEnabled)")

    fake_datasets(monkeypatch, unreachable)
    with pytest.raises(DataError, match="could not load nyu-mll/glue/rte.*--data-dir"):
        load_glue("rte", "train")


def test_hub_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match=r"pip install sparseadapter\[hub\]"):
        load_glue("rte", "train")


def test_a_very_long_field_loads(tmp_path):
    long_text = "word " * 40_000  # 200,000 characters: past the csv module's field limit
    folder = tmp_path / "SST-2"
    folder.mkdir()
    (folder / "train.tsv").write_text(f"sentence\tlabel\n{long_text}\t1\nshort\t0\n")
    examples = load_glue("sst2", "train", data_dir=tmp_path)
    assert [len(e.text_a) for e in examples] == [len(long_text), 5]


@pytest.mark.parametrize("score", ["5.5", "-0.1"])
def test_stsb_scores_outside_0_to_5_are_refused(tmp_path, score):
    folder = tmp_path / "STS-B"
    folder.mkdir()
    (folder / "train.tsv").write_text(f"sentence1\tsentence2\tscore\na\tb\t2.5\nc\td\t{score}\n")
    with pytest.raises(DataError, match=rf"unknown label '{score}' on line 3.*in \[0, 5\]"):
        load_glue("stsb", "train", data_dir=tmp_path)


def test_a_data_dir_that_is_a_file_is_named_as_such(tmp_path):
    (tmp_path / "glue.tsv").write_text("x")
    with pytest.raises(DataError, match="glue.tsv is a file; pass the folder"):
        load_glue("rte", "train", data_dir=tmp_path / "glue.tsv")


@pytest.mark.parametrize(
    ("task", "split", "message"),
    [
        (
            "squad",
            "validation",
            r"could not load rajpurkar/squad \(validation\).*the SQuAD JSON files",
        ),
        ("xsum", "test", r"could not load EdinburghNLP/xsum \(test\).*XSum JSON lines"),
    ],
)
def test_every_task_names_its_dataset_and_local_files_when_the_hub_fails(
    monkeypatch, task, split, message
):
    from sparseadapter.tasks import get_task

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub (OfflineModeIsEnabled)")

    fake_datasets(monkeypatch, unreachable)
    with pytest.raises(DataError, match=message):
        get_task(task).load(split, None, None)
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match=r"loading .* needs the datasets package.*--data-dir"):
        get_task(task).load(split, None, None)
