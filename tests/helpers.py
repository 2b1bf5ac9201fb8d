"""Builders shared by tests: tiny random models, batches, real RTE batches, a training loop,
and running a benchmark script."""

from __future__ import annotations

import csv
import importlib
import inspect
import math
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, BertModel, PretrainedConfig

from sparseadapter.errors import ConfigError
from sparseadapter.optional import has_adapterhub

HAS_ADAPTERHUB = has_adapterhub()
# PEFT prefix tuning passes past_key_values to the encoder, which transformers 5 renamed: there
# attach_adapter refuses it with a ConfigError, and the prefix cases expect exactly that.
PEFT_PREFIX_ON_ENCODERS = "past_key_values" in inspect.signature(BertModel.forward).parameters
PEFT_PREFIX_REFUSED = pytest.mark.xfail(
    not PEFT_PREFIX_ON_ENCODERS,
    raises=ConfigError,
    strict=True,
    reason="transformers 5: PEFT prefix tuning cannot pass past_key_values to an encoder",
)
# The same for a model built with PEFT directly, where PEFT's own ValueError is what comes.
PEFT_PREFIX_FAILS = pytest.mark.xfail(
    not PEFT_PREFIX_ON_ENCODERS,
    raises=ValueError,
    strict=True,
    reason="transformers 5: PEFT prefix tuning cannot pass past_key_values to an encoder",
)

ARCHITECTURES = ("bert", "roberta", "bart")
VOCAB_SIZE = 100
FIRST_PLAIN_TOKEN = 4  # ids 0-3 are special tokens in all three tiny vocabularies
BART_EOS = 2

# Task heads of HF sequence classifiers, bare (AdapterHub) or wrapped by PEFT (modules_to_save).
HEAD = re.compile(r"(^|\.)(classifier|classification_head|modules_to_save)\.")


def library_marks(library: str, adapter: str = "") -> list[pytest.MarkDecorator]:
    """The marks of a test case that builds ``adapter`` with ``library``: AdapterHub cases need
    AdapterHub installed, PEFT prefix cases need an encoder that takes past_key_values."""
    if library == "adapterhub":
        return [pytest.mark.adapterhub]
    if library == "peft" and adapter == "prefix":
        return [PEFT_PREFIX_REFUSED]
    return []


def tiny_config(arch: str = "bert", num_labels: int = 2, **overrides) -> PretrainedConfig:
    """A random-weight config of ``arch`` with hidden size 32 and 2 layers (2 + 2 for BART);
    ``overrides`` replace any of its fields."""
    sizes = (
        dict(
            d_model=32,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
        )
        if arch == "bart"
        else dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    )
    common = {"vocab_size": VOCAB_SIZE, "max_position_embeddings": 64, "num_labels": num_labels}
    return AutoConfig.for_model(arch, **{**sizes, **common, **overrides})


def tiny_model(arch: str, num_labels: int = 2, seed: int = 0) -> nn.Module:
    """A randomly initialized sequence classifier of ``arch`` (see :func:`tiny_config`)."""
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(tiny_config(arch, num_labels))


def tiny_distilbert(seed: int = 0) -> nn.Module:
    """A random DistilBERT classifier: its head is two modules, pre_classifier and classifier."""
    torch.manual_seed(seed)
    config = AutoConfig.for_model(
        "distilbert", dim=32, n_layers=2, n_heads=2, hidden_dim=64, vocab_size=VOCAB_SIZE
    )
    return AutoModelForSequenceClassification.from_config(config)


def random_batches(
    num_batches: int = 2, batch_size: int = 8, seq_len: int = 12, seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    """Batches of random tokens for the tiny models, with learnable labels.

    The label is the parity of the second token, so a model can fit it. Every sequence ends in
    one BART end-of-sequence token (BART classifies from it; BERT/RoBERTa see a plain token).
    """
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(num_batches):
        ids = torch.randint(
            FIRST_PLAIN_TOKEN, VOCAB_SIZE, (batch_size, seq_len), generator=generator
        )
        ids[:, -1] = BART_EOS
        batches.append(
            {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids[:, 1] % 2}
        )
    return batches


def rte_batches(
    glue_dir: Path, tokenizer, num_examples: int = 64, batch_size: int = 8, max_length: int = 64
) -> list[dict[str, torch.Tensor]]:
    """The first ``num_examples`` RTE training pairs, tokenized into padded batches."""
    with open(glue_dir / "RTE" / "train.tsv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:num_examples]
    batches = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        batch = tokenizer(
            [r["sentence1"] for r in chunk],
            [r["sentence2"] for r in chunk],
            truncation=True,
            max_length=max_length,
            padding=True,
            return_tensors="pt",
        )
        batch["labels"] = torch.tensor([int(r["label"] == "entailment") for r in chunk])
        batches.append(dict(batch))
    return batches


def train(
    model: nn.Module, batches: list[dict], steps: int, lr: float = 1e-2, weight_decay: float = 0.1
) -> list[float]:
    """``steps`` AdamW steps cycling over ``batches`` (train mode); the loss of each step."""
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay
    )
    model.train()
    losses = []
    for step in range(steps):
        loss = model(**batches[step % len(batches)]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def expected_kept(numel: int, sparsity: float) -> int:
    """round((1 - s) * N) with halves rounded up, in exact arithmetic on the decimal ``s`` is
    written as: the kept count the method defines."""
    return math.floor((1 - Fraction(repr(sparsity))) * numel + Fraction(1, 2))


def pruned_nonzero(model: nn.Module, masks: dict[str, torch.Tensor]) -> int:
    """How many pruned positions (mask False) hold a non-zero value."""
    params = dict(model.named_parameters())
    return sum(int(params[n].detach()[~m].count_nonzero()) for n, m in masks.items())


def head_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the trainable task-head parameters, by name."""
    return {
        n: p.detach().clone()
        for n, p in model.named_parameters()
        if p.requires_grad and HEAD.search(n)
    }


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def benchmark_module(name: str) -> ModuleType:
    """The module ``benchmarks/<name>.py``, imported as its scripts import each other."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


def run_benchmark(script: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``benchmarks/<script>`` with ``args`` in a new process; fails the test if it fails."""
    path = BENCHMARKS / script
    done = subprocess.run(
        [sys.executable, str(path), *args], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done


def run_offline(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run Python ``code`` in a fresh process in ``cwd`` with the hub switched off, as a user
    without sparseadapter would load an export; fails the test unless it prints EXPORT_OK."""
    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and "EXPORT_OK" in done.stdout, done.stderr[-3000:]
    return done


def other_base_model(model_dir: str, folder: Path) -> Path:
    """A copy of the model in ``model_dir`` (with its tokenizer) whose input embeddings differ:
    another base model to the checkpoint fingerprint."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(model_dir)
    with torch.no_grad():
        model.get_input_embeddings().weight.add_(1.0)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(folder)
    return folder
