#!/bin/bash
# Trains the runs that `checkpoint_size.py --runs DIR` re-scores at every precision: MiniLM-L6,
# SNIP at 90 % and 95 %, Houlsby (lr 3e-3) and LoRA (lr 2e-3) on SST-2, STS-B and MRPC, then runs
# the benchmark. Small by default (2k training examples, 1 epoch, 500 dev examples: what fits a
# shared CPU); pass TRAIN=8000 EPOCHS=2 EVAL=all on a GPU for the quality grid's settings.
#
#   bash benchmarks/checkpoint_size_runs.sh [RUNS_DIR]      (default runs/checkpoint-size)
#   (GLUE TSVs from DATA, default ../shared/data/glue)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs/checkpoint-size}
TRAIN=${TRAIN:-2000}
EPOCHS=${EPOCHS:-1}
EVAL=${EVAL:-500}
DATA=${DATA:-../shared/data/glue}
SPARSITIES=${SPARSITIES:-"0.9 0.95"}
eval_flag=()
[ "$EVAL" != all ] && eval_flag=(--max-eval-samples "$EVAL")
for task in sst2 stsb mrpc; do
  for adapter in houlsby lora; do
    lr=3e-3
    [ "$adapter" = lora ] && lr=2e-3
    for s in $SPARSITIES; do
      out="$RUNS/$task-$adapter-snip$s"
      [ -f "$out/final.json" ] && continue
      python -m sparseadapter train --task "$task" --model minilm --adapter "$adapter" \
        --pruner snip --sparsity "$s" --data-dir "$DATA" --max-train-samples "$TRAIN" "${eval_flag[@]}" \
        --max-length 128 --epochs "$EPOCHS" --batch-size 32 --lr "$lr" --output "$out" --quiet
    done
  done
done
python benchmarks/checkpoint_size.py --runs "$RUNS"
