"""The core imports and prunes a PEFT model without the optional AdapterHub package."""

import subprocess
import sys

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
