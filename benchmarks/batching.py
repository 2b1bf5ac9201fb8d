"""Length-grouped vs shuffled training batches (``data.group_by_length``): padding and speed.

For each GLUE task: padded tokens per real token over one epoch of batches of 32 (max length
128), with plain shuffling and with ``LengthGroupedBatches``, as training's
``data.train_loader`` makes them. Then, on SST-2 (the quality
benchmark's 8k training subset), Houlsby on MiniLM-L6: training steps (forward, backward, AdamW)
alternating one grouped and one shuffled batch, examples per second of each, and their ratio.

    python benchmarks/batching.py            # writes benchmarks/results/batching.{json,md}
    python benchmarks/batching.py --quick    # two tasks, a few steps, prints only
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import common
import torch

from sparseadapter.adapters import build_model, resolve_model
from sparseadapter.data import load_tokenizer, train_loader
from sparseadapter.runconfig import RunConfig

TASKS = {"rte": None, "mrpc": None, "stsb": None, "cola": None, "sst2": 8000}
BATCH = 32
KINDS = {"grouped": True, "shuffled": False}  # kind -> data.group_by_length


def epoch(features: list[dict], tokenizer, grouped: bool, seed: int = 0) -> list[dict]:
    """One epoch of training batches as training makes them (``data.train_loader``)."""
    config = RunConfig.from_dict(
        {"data": {"task": "sst2", "group_by_length": grouped}, "train": {"batch_size": BATCH}}
    )
    return list(train_loader(config, features, tokenizer, torch.Generator().manual_seed(seed)))


def padding(batches: list[dict]) -> float:
    """Tokens fed to the model (each batch padded to its longest example) per real token."""
    fed = sum(b["input_ids"].numel() for b in batches)
    return fed / sum(int(b["attention_mask"].sum()) for b in batches)


def step_speed(features: list[dict], tokenizer, steps: int) -> dict[str, float]:
    """Examples per second of grouped and shuffled batches, one step of each in turn."""
    model, _ = build_model(resolve_model("minilm"), 2, "houlsby")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    kinds = {kind: epoch(features, tokenizer, grouped) for kind, grouped in KINDS.items()}
    seconds = {kind: [] for kind in kinds}
    model.train()
    for step in range(steps + 2):  # the first two rounds warm up, untimed
        for kind, batches in kinds.items():
            batch = batches[step]
            start = time.perf_counter()
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if step >= 2:
                seconds[kind].append(time.perf_counter() - start)
    speed = {
        kind: sum(len(b["labels"]) for b in kinds[kind][2 : steps + 2]) / sum(s)
        for kind, s in seconds.items()
    }
    median = {kind: statistics.median(s) for kind, s in seconds.items()}
    return {
        "steps": steps,
        "examples_per_second": speed,
        "median_step_ms": {k: 1000 * v for k, v in median.items()},
        "speedup": speed["grouped"] / speed["shuffled"],
    }


def markdown(results: dict) -> str:
    speed = results["speed"]
    lines = [
        "# Length-grouped vs shuffled training batches",
        "",
        f"Produced by `python benchmarks/batching.py`; torch {results['torch']}, "
        f"{results['threads']} threads, {results['cpus']} CPUs. Batches of {BATCH}, max length 128.",
        "",
        "| task | training examples | padded / real tokens, shuffled | grouped |",
        "|---|---|---|---|",
    ]
    for task, row in results["padding"].items():
        lines.append(
            f"| {task} | {row['examples']} | {row['shuffled']:.2f} | {row['grouped']:.2f} |"
        )
    lines += [
        "",
        f"Training steps on {results['speed_task']} (Houlsby, MiniLM-L6), one grouped and one "
        f"shuffled batch in turn, {speed['steps']} of each after 2 warm-up rounds:",
        "",
        "| batches | examples / s | median step ms |",
        "|---|---|---|",
        *(
            f"| {k} | {speed['examples_per_second'][k]:.1f} | {speed['median_step_ms'][k]:.0f} |"
            for k in ("grouped", "shuffled")
        ),
        "",
        f"Speed-up of grouped batches: **{speed['speedup']:.2f}x** examples per second.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = common.parser(__doc__)
    common.add_data_dir(p)
    p.add_argument("--steps", type=int, default=100, help="timed steps of each kind")
    p.add_argument("--quick", action="store_true", help="rte and sst2, 3 steps, print only")
    args = p.parse_args(argv)
    tasks = {"rte": None, "sst2": 8000} if args.quick else TASKS
    steps = 3 if args.quick else args.steps
    tokenizer = load_tokenizer(resolve_model("minilm"))
    results = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "padding": {},
        "speed_task": "sst2",
    }
    for task, limit in tasks.items():
        features = common.task_features(tokenizer, task, args.data_dir, limit)
        results["padding"][task] = {
            "examples": len(features),
            "shuffled": padding(epoch(features, tokenizer, grouped=False)),
            "grouped": padding(epoch(features, tokenizer, grouped=True)),
        }
    results["speed"] = step_speed(features, tokenizer, steps)  # the last task: sst2
    text = markdown(results)
    print(text)
    if not args.quick:
        common.write_json(common.RESULTS / "batching.json", results)
        common.write_text(common.RESULTS / "batching.md", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
