"""LoRA factor alignment: how many LoRA modules per-weight pruning leaves dead, and the fix.

A LoRA update is B·A. A kept weight of A's row r only trains if B's column r keeps a weight too;
a module with no such rank never learns. For PEFT LoRA (r 8, query/value) on MiniLM-L6 and its
4x-wide (Large-Sparse) version, SNIP scores the weights on the first 320 SST-2
training examples (the quality benchmark's scoring data). From those scores the masks are chosen
twice at each sparsity: weight by weight (``pairs=()``) and with the pairs kept aligned (what
``sparsify`` does), and for each we count the dead modules and the ranks still alive.

    python benchmarks/lora_alignment.py        # writes benchmarks/results/lora_alignment.{json,md}
    python benchmarks/lora_alignment.py --quick # 64 scoring examples, prints only
"""

from __future__ import annotations

import statistics
from pathlib import Path

import common
import torch

from sparseadapter import SparsityConfig, score_weights
from sparseadapter.adapters import build_model, resolve_model
from sparseadapter.data import load_tokenizer
from sparseadapter.masks import select_masks
from sparseadapter.targets import lora_pairs

SPARSITIES = {1: [0.4, 0.6, 0.8, 0.9, 0.95], 4: [0.75, 0.9, 0.95]}


def alive_ranks(masks: dict[str, torch.Tensor], pairs: list[tuple[str, str]]) -> list[int]:
    """Per pair: the ranks r where A's row r and B's column r both keep a weight."""
    return [
        int((masks[a].flatten(1).any(1) & masks[b].transpose(0, 1).flatten(1).any(1)).sum())
        for a, b in pairs
    ]


def measure(large_sparse: int, examples: int, data_dir: Path) -> list[dict]:
    torch.manual_seed(0)
    path = resolve_model("minilm")
    model, _ = build_model(path, 2, "lora", library="peft", large_sparse=large_sparse)
    tokenizer = load_tokenizer(path)
    features = common.task_features(tokenizer, "sst2", data_dir, examples)
    batches = common.fixed_batches(features, tokenizer, 32)
    scores = score_weights(model, SparsityConfig("snip", 0.5, num_examples=examples), batches)
    pairs = lora_pairs(scores)
    rows = []
    for sparsity in SPARSITIES[large_sparse]:
        per_weight = select_masks(scores, sparsity, "global")
        aligned = select_masks(scores, sparsity, "global", pairs)
        same = all(torch.equal(per_weight[n], aligned[n]) for n in scores)
        for selection, masks in (("per weight", per_weight), ("aligned pairs", aligned)):
            ranks = alive_ranks(masks, pairs)
            rows.append(
                {
                    "large_sparse": large_sparse,
                    "sparsity": sparsity,
                    "selection": selection,
                    "modules": len(pairs),
                    "dead_modules": sum(r == 0 for r in ranks),
                    "alive_ranks_min": min(ranks),
                    "alive_ranks_median": statistics.median(ranks),
                    "same_masks": same,
                }
            )
    return rows


def markdown(rows: list[dict], examples: int) -> str:
    lines = [
        "# LoRA factor alignment",
        "",
        "Produced by `python benchmarks/lora_alignment.py`: PEFT LoRA (r 8 on query/value, and the "
        f"4x-wide Large-Sparse version) on MiniLM-L6, SNIP scores from {examples} SST-2 training "
        "examples, global selection. A module is dead when no rank keeps a weight in both A's row "
        "and B's column; alive ranks are per module, out of r.",
        "",
        "| LoRA width | sparsity | selection | dead modules | alive ranks (min / median) | "
        "same masks both ways |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        width = f"r {8 * r['large_sparse']}"
        lines.append(
            f"| {width} | {r['sparsity']:.0%} | {r['selection']} | "
            f"{r['dead_modules']} of {r['modules']} | {r['alive_ranks_min']} / "
            f"{r['alive_ranks_median']:g} | {'yes' if r['same_masks'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = common.parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="64 scoring examples, print only")
    common.add_data_dir(parser, help="GLUE TSV folder")
    args = parser.parse_args()
    examples = 64 if args.quick else 320
    rows = [row for width in SPARSITIES for row in measure(width, examples, args.data_dir)]
    text = markdown(rows, examples)
    print(text)
    if not args.quick:
        common.write_json(common.RESULTS / "lora_alignment.json", rows)
        common.write_text(common.RESULTS / "lora_alignment.md", text)


if __name__ == "__main__":
    main()
