"""A hand-built model small enough to check every score formula by hand."""

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput


class TinyAdapterModel(nn.Module):
    """embedding -> adapter_down -> ReLU -> adapter_up -> first token -> classifier head.

    The embedding is frozen (the "backbone"); the adapter and the head are trainable.
    """

    def __init__(self, vocab: int = 11, hidden: int = 6, bottleneck: int = 4, labels: int = 3):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.embed.weight.requires_grad_(False)
        self.adapter_down = nn.Linear(hidden, bottleneck, bias=False)
        self.act = nn.ReLU()
        self.adapter_up = nn.Linear(bottleneck, hidden, bias=False)
        self.norm = nn.LayerNorm(hidden)
        self.classifier = nn.Linear(hidden, labels)

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def features(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(input_ids)
        return self.adapter_up(self.act(self.adapter_down(h)))[:, 0]

    def forward(self, input_ids, labels=None, attention_mask=None):
        logits = self.classifier(self.features(input_ids))
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def tiny_batches(n_batches: int = 3, batch_size: int = 4, seq: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "input_ids": torch.randint(0, 11, (batch_size, seq), generator=g),
            "labels": torch.randint(0, 3, (batch_size,), generator=g),
        }
        for _ in range(n_batches)
    ]


ADAPTER_NAMES = ["adapter_down.weight", "adapter_up.weight"]
