"""SQuAD v1.1 scoring: answer normalization, exact match and token F1, max over gold answers.

The rules of the official v1.1 evaluation: lower-case, drop punctuation and the articles
a/an/the, collapse whitespace; F1 over the bag of normalized tokens. Scores are on the 0-1 scale
(the official script prints them x100).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1(prediction: str, gold: str) -> float:
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = Counter(predicted) & Counter(expected)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted), overlap / len(expected)
    return 2 * precision * recall / (precision + recall)


def squad_scores(
    predictions: Mapping[str, str], answers: Mapping[str, Sequence[str]]
) -> dict[str, float]:
    """``exact_match`` and ``f1`` averaged over the questions of ``answers`` (id -> gold texts);
    a question without a prediction scores 0."""
    if not answers:
        raise ValueError("no questions to score")
    em = f1 = 0.0
    for qid, golds in answers.items():
        predicted = predictions.get(qid, "")
        em += max(exact_match(predicted, g) for g in golds)
        f1 += max(token_f1(predicted, g) for g in golds)
    return {"exact_match": em / len(answers), "f1": f1 / len(answers)}
