"""SQuAD and ROUGE metrics and span search on hand-worked cases (no model, no data)."""

import math

import pytest
import torch

from sparseadapter.tasks.squad import best_spans
from sparseadapter.tasks.squad_metric import exact_match, normalize_answer, squad_scores, token_f1
from sparseadapter.tasks.xsum import first_line, rouge


def test_normalization_drops_case_punctuation_articles_and_spaces():
    assert normalize_answer("  The Eiffel-Tower,  in  Paris! ") == "eiffeltower in paris"
    assert normalize_answer("An apple a day") == "apple day"
    # "a" inside a word is not an article
    assert normalize_answer("Alabama") == "alabama"


def test_exact_match_and_token_f1_hand_worked():
    assert exact_match("the Denver Broncos", "Denver Broncos!") == 1.0
    assert exact_match("Denver", "Denver Broncos") == 0.0
    # prediction {cat, sat} vs gold {cat, sat, down}: P = 2/2, R = 2/3, F1 = 0.8
    assert token_f1("the cat sat", "a cat sat down") == pytest.approx(0.8)
    # repeated tokens count once per occurrence: {to, to, be} vs {to, be}: P = 2/3, R = 1
    assert token_f1("to to be", "to be") == pytest.approx(0.8)
    assert token_f1("", "anything") == 0.0


def test_scores_take_the_best_gold_answer_and_count_missing_predictions_as_zero():
    answers = {"q1": ["Denver Broncos", "Broncos"], "q2": ["1990"], "q3": ["Santa Clara"]}
    predictions = {"q1": "broncos", "q2": "in 1990"}  # q3 unanswered
    scores = squad_scores(predictions, answers)
    # EM: q1 matches "Broncos" -> (1 + 0 + 0) / 3; F1: q1 1.0, q2 2*(1/2*1)/(1.5) = 2/3, q3 0
    assert scores["exact_match"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx((1 + 2 / 3) / 3)


def test_span_search_respects_context_order_and_length():
    # tokens 0-1 are the question, 2-7 the context (character offsets 0..60)
    offsets = [[None, None] + [(10 * i, 10 * i + 5) for i in range(6)]]
    start = torch.tensor([[9.0, 0, 0, 1, 0, 0, 5, 0]])
    end = torch.tensor([[9.0, 0, 4, 0, 0, 0, 0, 3]])
    # best unconstrained pair (0, 0) is in the question; start 6 + end 2 runs backwards;
    # start 6 + end 7 (8) beats start 3 + end 2 (invalid) and start 3 + end 7 (4)
    ((index, score, first, last),) = best_spans(start, end, [0], offsets, max_answer_length=30)
    assert (index, score, first, last) == (0, 8.0, 40, 55)
    # at most one token long: start 6 + end 6 (5) or start 2 + end 2 (4) -> 5
    ((_, score, first, last),) = best_spans(start, end, [0], offsets, max_answer_length=1)
    assert (score, first, last) == (5.0, 40, 45)


def test_span_search_on_a_window_without_context():
    offsets = [[None, None, None]]
    ((_, score, first, last),) = best_spans(torch.zeros(1, 3), torch.zeros(1, 3), [0], offsets, 30)
    assert math.isinf(score) and first is None and last is None


def test_rouge_on_hand_worked_pairs():
    scores = rouge(["the cat sat"], ["the cat sat on the mat"])
    # unigrams: 3 of 3 predicted match, 3 of 6 reference -> F = 2 * 1 * 0.5 / 1.5
    assert scores["rouge1"] == pytest.approx(2 / 3)
    # bigrams: 2 of 2 predicted, 2 of 5 reference -> F = 2 * 0.4 / 1.4
    assert scores["rouge2"] == pytest.approx(0.8 / 1.4)
    assert scores["rougeL"] == pytest.approx(2 / 3)  # longest common subsequence: 3 tokens


def test_rouge_stems_and_scores_empty_generations_zero():
    assert rouge(["cats running"], ["cat runs"])["rouge1"] == pytest.approx(1.0)
    empty = rouge(["", "a dog barked"], ["a dog barked", "a dog barked"])
    assert empty == {"rouge1": 0.5, "rouge2": 0.5, "rougeL": 0.5}


def test_summary_is_the_first_nonempty_line():
    assert first_line("\n  Rain is coming.\nArticle: more") == "Rain is coming."
    assert first_line(" \n\n") == ""
