"""SparseAdapter inside your own script: a PEFT LoRA on a decoder LM, pruned with SNIP at
initialization, then fine-tuned with the Hugging Face ``Trainer``.

    python examples/hf_trainer.py --model smollm2 --steps 20

``sparsify`` runs once, before the ``Trainer`` builds its optimizer; from then on the masks are
enforced after every optimizer step, so the pruned weights stay exactly zero whatever the
Trainer does (weight decay, gradient clipping, mixed precision, gradient checkpointing).
"""

from __future__ import annotations

import argparse

import peft
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainingArguments,
)

import sparseadapter as sa
from sparseadapter.models import resolve_model

TEXTS = [
    "Adapters add a few trainable weights to a frozen language model.",
    "Pruning at initialization removes most of them before training starts.",
    "The kept weights are trained as usual; the pruned ones stay zero.",
    "Large-Sparse widens the adapter and prunes it back to the same budget.",
] * 8


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", help="an alias, HF id or folder")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--output", default="runs/example-trainer")
    args = parser.parse_args(argv)

    path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:  # decoders have none: pad with EOS
        tokenizer.pad_token = tokenizer.eos_token
    base = AutoModelForCausalLM.from_pretrained(path)
    model = peft.get_peft_model(base, peft.LoraConfig(task_type="CAUSAL_LM", r=8))

    collate = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    examples = [tokenizer(t, truncation=True, max_length=64) for t in TEXTS]
    scoring = [collate(examples[i : i + 8]) for i in range(0, 32, 8)]
    report = sa.sparsify(model, sa.SparsityConfig(method="snip", sparsity=args.sparsity), scoring)
    print(f"pruned {report.pruned:,} of {report.prunable:,} LoRA weights")

    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=args.output,
            max_steps=args.steps,
            per_device_train_batch_size=8,
            learning_rate=1e-3,
            weight_decay=0.1,
            gradient_checkpointing=True,
            gradient_checkpointing_kwargs={"use_reentrant": False},
            report_to=[],
            save_strategy="no",
            use_cpu=not torch.cuda.is_available(),
        ),
        train_dataset=examples,
        data_collator=collate,
    )
    result = trainer.train()
    masks = sa.get_masks(model)
    params = dict(model.named_parameters())
    revived = sum(int(params[n].detach()[~m].count_nonzero()) for n, m in masks.items())
    print(f"train loss {result.training_loss:.4f}; non-zero pruned weights: {revived}")
    sa.save_sparse(model, f"{args.output}/adapter", overwrite=True)
    return {"loss": result.training_loss, "revived": revived, "pruned": report.pruned}


if __name__ == "__main__":
    main()
