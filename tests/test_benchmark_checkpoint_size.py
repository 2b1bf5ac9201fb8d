"""benchmarks/checkpoint_size.py --quick: sizes per precision and mask codings, end to end."""

import re

import pytest
from helpers import run_benchmark


@pytest.mark.slow
def test_quick_run_reports_sizes_and_codings(minilm_path):
    done = run_benchmark("checkpoint_size.py", "--quick")
    rows = re.findall(
        r"\| lora \| (random|magnitude) \| ([\d.]+) \| (\w+) \| (\w+) \| ([\d,]+) \|", done.stdout
    )
    sizes = {(p, float(s), q): int(b.replace(",", "")) for p, s, q, _, b in rows}
    assert len(sizes) == 2 * 2 * 5
    for pruner in ("random", "magnitude"):
        ordered = [sizes[(pruner, 0.95, q)] for q in ("fp32", "fp16", "int8", "int4")]
        assert ordered == sorted(ordered, reverse=True)
        # the same tensor bytes; the headers differ by the dtype's name, and the 8-byte
        # alignment of a header whose length also varies with the model's path (a CI clone's
        # path gave 5 bytes): within two alignment steps, where a doubled payload would be kBs
        assert abs(sizes[(pruner, 0.95, "bf16")] - sizes[(pruner, 0.95, "fp16")]) <= 16
    codings = {p: "rice" for p, _, _, c, _ in rows if c == "rice"}
    assert codings, "coded masks at 95 %"
    bits = re.findall(
        r"\| lora random \| 0.95 \| ([\d.]+) \| 1.000 \|.* \| ([\d.]+) \|", done.stdout
    )
    ((entropy, rice),) = [(float(e), float(r)) for e, r in bits]
    assert entropy <= rice <= 1.05 * entropy
