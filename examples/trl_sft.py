"""SparseAdapter with TRL's ``SFTTrainer``: a PEFT LoRA on a decoder LM, pruned with SNIP at
initialization, then supervised fine-tuning on prompt/completion pairs (loss on the completion).

    pip install trl
    python examples/trl_sft.py --model smollm2 --steps 20

Prune the PEFT model yourself and hand it to ``SFTTrainer`` (without ``peft_config``, which
would wrap the model again and drop the masks).
"""

from __future__ import annotations

import argparse

import peft
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

import sparseadapter as sa
from sparseadapter.models import resolve_model

PAIRS = [
    ("Summarize: adapters add a few trainable weights to a frozen model.", " Small add-ons."),
    ("Summarize: pruning removes most adapter weights before training.", " Fewer weights."),
    ("Summarize: the kept weights train as usual.", " Kept ones learn."),
    ("Summarize: Large-Sparse widens and prunes back.", " Wider, as sparse."),
] * 8


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="an alias, HF id or folder")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--output", default="runs/example-sft")
    args = parser.parse_args(argv)

    path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    base = AutoModelForCausalLM.from_pretrained(path)
    model = peft.get_peft_model(base, peft.LoraConfig(task_type="CAUSAL_LM", r=8))

    # scoring batches: the completion tokens are the labels, as SFT trains them
    scoring = []
    for prompt, completion in PAIRS[:16]:
        ids = tokenizer(prompt + completion, return_tensors="pt")["input_ids"]
        labels = ids.clone()
        labels[:, : len(tokenizer(prompt)["input_ids"])] = -100
        scoring.append({"input_ids": ids, "labels": labels})
    report = sa.sparsify(model, sa.SparsityConfig(method="snip", sparsity=args.sparsity), scoring)
    print(f"pruned {report.pruned:,} of {report.prunable:,} LoRA weights")

    data = Dataset.from_dict({"prompt": [p for p, _ in PAIRS], "completion": [c for _, c in PAIRS]})
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(
            output_dir=args.output,
            max_steps=args.steps,
            per_device_train_batch_size=8,
            learning_rate=1e-3,
            weight_decay=0.1,
            report_to=[],
            save_strategy="no",
            use_cpu=not torch.cuda.is_available(),
        ),
        train_dataset=data,
        processing_class=tokenizer,
    )
    result = trainer.train()
    masks = sa.get_masks(model)
    params = dict(model.named_parameters())
    revived = sum(int(params[n].detach()[~m].count_nonzero()) for n, m in masks.items())
    print(f"train loss {result.training_loss:.4f}; non-zero pruned weights: {revived}")
    return {"loss": result.training_loss, "revived": revived, "pruned": report.pruned}


if __name__ == "__main__":
    main()
