"""SQuAD v1.1 extractive question answering: a span head (``start``/``end`` logits) on an encoder.

Contexts longer than a window are cut into overlapping windows (``data.max_length`` tokens,
``data.doc_stride`` tokens of overlap); a training window without the answer points at the first
token ([CLS]), as in the original BERT recipe. A question's prediction is the best-scoring span
(start logit + end logit) over all of its windows, among spans inside the context, ending at
or after their start and at most ``data.max_answer_length`` tokens long: an exhaustive search,
which is n-best search with no limit on n.

Data: ``--data-dir`` with the official ``dev-v1.1.json`` (or its ``.zip``) and ``train-v1.1.json``
or the ``train-v1.1-from-explorer.partNN-of-MM.json`` files (a train set rebuilt from the SQuAD
explorer pages, without question ids: ids are derived from each question and its paragraph),
or the hub's ``rajpurkar/squad`` without one.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from sparseadapter.batching import PadCollator
from sparseadapter.errors import ConfigError, DataError, shown
from sparseadapter.tasks.base import QUESTION_ANSWERING, EvalSet, Task, subset
from sparseadapter.tasks.hub import hub_split
from sparseadapter.tasks.squad_metric import squad_scores

if TYPE_CHECKING:
    from accelerate import Accelerator

    from sparseadapter.runconfig import DataConfig

HUB_DATASET = "rajpurkar/squad"
_FILES = {
    "train": ("train-v1.1.json", "train-v1.1.json.zip", "train-v1.1-from-explorer.part*.json"),
    "validation": ("dev-v1.1.json", "dev-v1.1.json.zip"),
}


@dataclass(frozen=True)
class QAExample:
    """One question on one paragraph, with every gold answer (text and character offset)."""

    id: str
    question: str
    context: str
    answers: tuple[str, ...]
    answer_starts: tuple[int, ...]


class SquadTask(Task):
    name = "squad"
    head = QUESTION_ANSWERING
    metrics = ("exact_match", "f1")
    main_metric = "f1"
    default_max_length = 384

    @classmethod
    def check(cls, data: DataConfig) -> None:
        if data.doc_stride >= data.max_length:
            raise ConfigError(
                f"data.doc_stride ({data.doc_stride}) must be shorter than data.max_length "
                f"({data.max_length}), or windows would not advance; e.g. --doc-stride 128"
            )

    def load(self, split: str, data_dir: str | None, max_samples: int | None) -> list[QAExample]:
        if split not in _FILES:
            raise DataError(f"unknown SQuAD split {shown(split)}; use train or validation")
        if data_dir is None:
            examples = _load_hub(split)
        else:
            examples = [e for path in _files(Path(data_dir), split) for e in _read_file(path)]
        if not examples:
            raise DataError(
                f"the SQuAD {split} split in {data_dir or HUB_DATASET} has no questions"
            )
        return subset(examples, max_samples)

    def train_features(self, tokenizer, examples, data: DataConfig) -> list[dict[str, Any]]:
        encoded = _windows(tokenizer, examples, data)
        features = []
        for i, sample in enumerate(encoded["overflow_to_sample_mapping"]):
            example = examples[sample]
            start_char = example.answer_starts[0]
            end_char = start_char + len(example.answers[0])
            offsets, sequence = encoded["offset_mapping"][i], encoded.sequence_ids(i)
            context = [t for t, s in enumerate(sequence) if s == 1]
            start = end = 0  # the answer is not in this window: point at [CLS]
            if offsets[context[0]][0] <= start_char and offsets[context[-1]][1] >= end_char:
                start = next(t for t in context if offsets[t][1] > start_char)
                end = next(t for t in reversed(context) if offsets[t][0] < end_char)
            feature = {k: encoded[k][i] for k in encoded if k in _MODEL_INPUTS}
            features.append({**feature, "start_positions": start, "end_positions": end})
        return features

    def eval_set(self, tokenizer, examples, data: DataConfig, batch_size: int) -> EvalSet:
        encoded = _windows(tokenizer, examples, data)
        features, offsets = [], []
        for i in range(len(encoded["input_ids"])):
            sequence = encoded.sequence_ids(i)
            offsets.append(
                [o if s == 1 else None for o, s in zip(encoded["offset_mapping"][i], sequence)]
            )
            feature = {k: encoded[k][i] for k in encoded if k in _MODEL_INPUTS}
            features.append({**feature, "feature_index": i})
        loader = DataLoader(
            features, batch_size=batch_size, collate_fn=PadCollator(tokenizer.pad_token_id or 0)
        )
        owners = list(encoded["overflow_to_sample_mapping"])
        return EvalSet(loader, examples, {"offsets": offsets, "owners": owners})

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, eval_set: EvalSet, accelerator: Accelerator, tokenizer, data
    ) -> dict[str, float]:
        predictions = predict(model, eval_set, accelerator, data.max_answer_length)
        metrics: dict[str, Any] = squad_scores(
            predictions, {e.id: e.answers for e in eval_set.examples}
        )
        metrics["collapsed"] = len(set(predictions.values())) <= 1
        return metrics


_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@torch.no_grad()
def predict(
    model: nn.Module, eval_set: EvalSet, accelerator: Accelerator, max_answer_length: int
) -> dict[str, str]:
    """Question id -> predicted answer text: the best span over all of the question's windows."""
    offsets, owners = eval_set.extra["offsets"], eval_set.extra["owners"]
    best: dict[int, tuple[float, str]] = {}
    model.eval()
    for batch in eval_set.loader:
        indices = batch.pop("feature_index").tolist()
        out = model(**batch)
        spans = best_spans(out.start_logits, out.end_logits, indices, offsets, max_answer_length)
        for index, score, start, end in accelerator.gather_for_metrics(
            spans, use_gather_object=True
        ):
            example = owners[index]
            if start is not None and (example not in best or score > best[example][0]):
                best[example] = (score, eval_set.examples[example].context[start:end])
    return {e.id: best.get(i, (0.0, ""))[1] for i, e in enumerate(eval_set.examples)}


def best_spans(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    indices: list[int],
    offsets: list[list[tuple[int, int] | None]],
    max_answer_length: int,
) -> list[tuple[int, float, int | None, int | None]]:
    """Per window: (window index, score, context character start, end) of its best span, the
    characters None when the window holds no context token."""
    length = start_logits.size(1)
    spans = []
    positions = torch.arange(length, device=start_logits.device)
    width = positions[None, :] - positions[:, None]  # end - start
    allowed = (width >= 0) & (width < max_answer_length)
    for row, index in enumerate(indices):
        window = offsets[index]
        context = torch.tensor(
            [t < len(window) and window[t] is not None for t in range(length)],
            device=start_logits.device,
        )
        valid = allowed & context[:, None] & context[None, :]
        if not valid.any():
            spans.append((index, float("-inf"), None, None))
            continue
        scores = start_logits[row, :, None].float() + end_logits[row, None, :].float()
        scores = scores.masked_fill(~valid, float("-inf"))
        flat = int(scores.argmax())
        start, end = divmod(flat, length)
        spans.append((index, float(scores[start, end]), window[start][0], window[end][1]))
    return spans


def _windows(tokenizer, examples: list[QAExample], data: DataConfig):
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            "SQuAD needs a fast tokenizer (character offsets of each token); use a model whose "
            "tokenizer has a fast (Rust) version"
        )
    try:
        return tokenizer(
            [e.question.lstrip() for e in examples],
            [e.context for e in examples],
            truncation="only_second",
            max_length=min(data.max_length, tokenizer.model_max_length),
            stride=data.doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
    except Exception as err:  # the tokenizer's own error for a question that fills the window
        if "truncat" not in str(err).lower():
            raise
        raise DataError(
            f"a question leaves no room for its context in a {data.max_length}-token window "
            f"with stride {data.doc_stride}; raise --max-length or lower --doc-stride"
        ) from None


def _files(data_dir: Path, split: str) -> list[Path]:
    if not data_dir.is_dir():
        raise DataError(
            f"SQuAD data directory {data_dir} does not exist or is not a folder; pass the folder "
            "holding dev-v1.1.json(.zip) and the train file(s) with --data-dir"
        )
    for pattern in _FILES[split]:
        found = sorted(data_dir.glob(pattern))
        if found:
            return found
    raise DataError(
        f"no SQuAD {split} file in {data_dir}: expected one of {', '.join(_FILES[split])}"
    )


def _read_file(path: Path) -> list[QAExample]:
    try:
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as archive:
                names = [n for n in archive.namelist() if n.endswith(".json")]
                if len(names) != 1:
                    raise DataError(
                        f"{path} should hold exactly one .json file, found {len(names)}"
                    )
                document = json.loads(archive.read(names[0]).decode("utf-8"))
        else:
            document = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, zipfile.BadZipFile) as err:
        raise DataError(f"{path} is not SQuAD JSON ({err}); restore the file") from None
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise DataError(f"{path} is not in the SQuAD layout (a 'data' list of articles)")
    return _parse(document["data"], path)


def _parse(articles: list, path: Path) -> list[QAExample]:
    examples, seen = [], set()
    try:
        for article in articles:
            for paragraph in article["paragraphs"]:
                context = paragraph["context"]
                for qa in paragraph["qas"]:
                    qid = qa.get("id") or _derived_id(context, qa["question"], seen)
                    seen.add(qid)
                    examples.append(_example(qid, qa, context, path))
    except (KeyError, TypeError) as err:
        raise DataError(
            f"{path} is not in the SQuAD layout (missing {err}); each article needs "
            "paragraphs, each paragraph a context and qas"
        ) from None
    return examples


def _derived_id(context: str, question: str, seen: set[str]) -> str:
    """A stable id for a question the file gives none: a hash of its text and paragraph."""
    digest = hashlib.sha1(f"{context}\0{question}".encode()).hexdigest()[:24]
    qid, n = digest, 1
    while qid in seen:
        n += 1
        qid = f"{digest}-{n}"
    return qid


def _example(qid: str, qa: dict, context: str, path: Path) -> QAExample:
    answers = qa.get("answers") or []
    if not answers:
        raise DataError(
            f"question {shown(qid)} in {path} has no answers; SQuAD v1.1 needs at least one "
            "(v2.0's unanswerable questions are not supported)"
        )
    texts, starts = [], []
    for answer in answers:
        text, start = answer["text"], int(answer["answer_start"])
        if context[start : start + len(text)] != text:
            start = context.find(text)
            if start < 0:
                raise DataError(
                    f"answer {shown(text)} of question {shown(qid)} in {path} is not in its "
                    "paragraph; fix the answer text"
                )
        texts.append(text)
        starts.append(start)
    return QAExample(qid, qa["question"], context, tuple(texts), tuple(starts))


def _load_hub(split: str) -> list[QAExample]:
    rows = hub_split("SQuAD", HUB_DATASET, split, "the SQuAD JSON files")
    return [
        _example(
            row["id"],
            {
                "question": row["question"],
                "answers": [
                    {"text": text, "answer_start": start}
                    for text, start in zip(row["answers"]["text"], row["answers"]["answer_start"])
                ],
            },
            row["context"],
            Path(HUB_DATASET),
        )
        for row in rows
    ]
