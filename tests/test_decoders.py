"""Sparse adapters on decoder LMs: causal-LM pruning and training with the masks holding under
bf16 autocast and gradient checkpointing, and the Trainer / TRL examples run end to end."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import peft
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import sparseadapter as sa

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def lm_batches(tokenizer, n: int = 4, size: int = 4) -> list[dict[str, torch.Tensor]]:
    """Batches of short texts with the prompt half masked out of the labels (-100)."""
    batches = []
    for b in range(n):
        texts = [f"question {b} {i} answer {i * 7 % 5} done" for i in range(size)]
        enc = tokenizer(texts, padding=True, return_tensors="pt")
        labels = enc["input_ids"].clone()
        labels[:, :3] = -100
        labels[enc["attention_mask"] == 0] = -100
        batches.append({**enc, "labels": labels})
    return batches


@pytest.mark.parametrize("method", ["snip", "grasp", "synflow", "magnitude"])
def test_causal_lm_lora_prunes_and_trains_with_bf16_and_checkpointing(tiny_llama, method):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.pad_token = tokenizer.eos_token
    model = peft.get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_llama),
        peft.LoraConfig(task_type="CAUSAL_LM", r=4),
    )
    batches = lm_batches(tokenizer)
    report = sa.sparsify(model, sa.SparsityConfig(method=method, sparsity=0.6), batches)
    assert report.pruned > 0 and report.kept > 0
    masks = sa.get_masks(model)
    assert masks and all("lora_" in n for n in masks)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model.train()
    params = dict(model.named_parameters())
    before = {n: params[n].detach().clone() for n in masks}
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1
    )
    for step in range(4):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(**batches[step % len(batches)]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, keep in masks.items():
        assert not params[name].detach()[~keep].any(), f"{name}: a pruned weight came back"
    moved = sum(int((params[n].detach() != before[n])[masks[n]].sum()) for n in masks)
    assert moved > 0, "the kept weights never trained"


def _run_example(name: str, argv: list[str]) -> dict:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


@pytest.mark.parametrize("example", ["hf_trainer", "trl_sft"])
def test_the_trainer_examples_keep_pruned_weights_zero(example, tiny_llama, tmp_path):
    result = _run_example(
        example, ["--model", tiny_llama, "--steps", "4", "--output", str(tmp_path / "out")]
    )
    assert result["pruned"] > 0
    assert result["revived"] == 0
    assert result["loss"] == result["loss"] and result["loss"] > 0  # trained, finite
