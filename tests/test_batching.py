"""Length-grouped batches: every example once per epoch, far less padding, a reproducible order."""

import random

import torch

from sparseadapter.batching import LengthGroupedBatches, PadCollator


def _lengths(n=1000, seed=0):
    rng = random.Random(seed)
    return [rng.choice([rng.randint(3, 15), rng.randint(40, 120)]) for _ in range(n)]


def _padded_tokens(batches, lengths):
    return sum(max(lengths[i] for i in b) * len(b) for b in batches)


def test_every_example_once_per_epoch_and_len_is_exact():
    lengths = _lengths(1000)
    sampler = LengthGroupedBatches(lengths, 32, torch.Generator().manual_seed(0), group=5)
    for _ in range(2):
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert sorted(i for b in batches for i in b) == list(range(1000))
        assert all(1 <= len(b) <= 32 for b in batches)


def test_pads_far_less_than_random_batches():
    lengths = _lengths(3200)
    grouped = list(LengthGroupedBatches(lengths, 32, torch.Generator().manual_seed(1)))
    order = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(1)).tolist()
    shuffled = [order[k : k + 32] for k in range(0, len(order), 32)]
    assert _padded_tokens(grouped, lengths) < 0.6 * _padded_tokens(shuffled, lengths)


def test_order_depends_only_on_the_generator_state():
    lengths = _lengths(500)
    generator = torch.Generator().manual_seed(7)
    sampler = LengthGroupedBatches(lengths, 16, generator)
    state = generator.get_state()
    first = list(sampler)
    second = list(sampler)
    assert first != second  # a new order every epoch
    generator.set_state(state)
    assert list(sampler) == first
    # batches are not served shortest-to-longest: the batch order itself is shuffled
    maxima = [max(lengths[i] for i in b) for b in first]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)


def test_pad_collator_pads_to_the_longest_example():
    features = [
        {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": 1},
        {"input_ids": [5], "attention_mask": [1], "labels": 0},
    ]
    batch = PadCollator(pad_token_id=0)(features)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [1, 0]


def test_dev_batches_go_shortest_first_and_keep_every_example(minilm_path, glue_dir):
    from sparseadapter.data import eval_sets, load_run_data, load_tokenizer
    from sparseadapter.runconfig import RunConfig

    config = RunConfig.from_dict(
        {
            "model": {"name": minilm_path},
            "data": {"task": "rte", "data_dir": str(glue_dir), "max_eval_samples": 200},
            "train": {"eval_batch_size": 16},
        }
    )
    data = load_run_data(config, with_train=False)
    (eval_set,) = eval_sets(config, data, load_tokenizer(minilm_path)).values()
    loader = eval_set.loader
    batches = list(loader)
    widths = [b["input_ids"].shape[1] for b in batches]
    assert widths == sorted(widths) and widths[0] < widths[-1]
    labels = sorted(label for b in batches for label in b["labels"].tolist())
    assert labels == sorted(int(e.label) for e in data.dev["validation"])
