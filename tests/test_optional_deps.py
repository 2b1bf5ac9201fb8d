"""The core imports and prunes a PEFT model without the optional AdapterHub package."""

import json
import subprocess
import sys

from sparseadapter.checkpoint import read_metadata

SCRIPT = r"""
import sys
sys.modules["adapters"] = None  # any `import adapters` now raises ImportError
import torch, peft
from transformers import AutoConfig, AutoModelForSequenceClassification
import sparseadapter as sa

cfg = AutoConfig.for_model("bert", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, vocab_size=100)
model = peft.get_peft_model(AutoModelForSequenceClassification.from_config(cfg),
                            peft.LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]))
batch = {"input_ids": torch.randint(0, 100, (4, 8)), "labels": torch.tensor([0, 1, 0, 1])}
report = sa.sparsify(model, sa.SparsityConfig(method="snip", sparsity=0.5), batches=[batch])
wide, s = sa.large_sparse(peft.LoraConfig(r=4), 2)
assert wide.r == 8 and s == 0.5
print("kept", report.kept, "of", report.prunable)
"""


def test_core_works_without_adapterhub():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "kept 512 of 1024" in result.stdout


CLI_SCRIPT = r"""
import sys
sys.modules["adapters"] = None  # any `import adapters` now raises ImportError
from sparseadapter.cli import main

model, data, output = sys.argv[1:4]
flags = ["--task", "rte", "--model", model, "--data-dir", data, "--adapter", "lora",
         "--pruner", "snip", "--sparsity", "0.5", "--max-length", "32", "--epochs", "1",
         "--batch-size", "4", "--scoring-examples", "8", "--quiet"]
assert main(["train", *flags, "--output", output + "/auto"]) == 0
assert main(["train", *flags, "--library", "peft", "--output", output + "/peft"]) == 0
assert main(["train", *flags, "--library", "adapterhub", "--output", output + "/hub"]) == 2
"""


def test_cli_trains_peft_adapters_without_adapterhub(tiny_bert, tmp_path):
    rte = tmp_path / "data" / "RTE"
    rte.mkdir(parents=True)
    rows = "".join(f"{i}\tword {i}\tother {i % 3}\t{('entailment', 'not_entailment')[i % 2]}\n"
                   for i in range(16))  # fmt: skip
    for split in ("train", "dev"):
        (rte / f"{split}.tsv").write_text("index\tsentence1\tsentence2\tlabel\n" + rows)
    result = subprocess.run(
        [sys.executable, "-c", CLI_SCRIPT, tiny_bert, str(tmp_path / "data"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "the 'lora' adapter needs AdapterHub" in result.stderr
    for run in ("auto", "peft"):
        final = json.loads((tmp_path / run / "final.json").read_text())
        saved = read_metadata(tmp_path / run / "adapter")
        assert saved["library"] == "peft"
        assert final["sparsity"]["kept"] * 2 == final["sparsity"]["prunable"]
    assert not (tmp_path / "hub").exists()
