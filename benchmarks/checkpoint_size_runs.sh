#!/bin/bash
# Trains the runs that `checkpoint_size.py --runs DIR` re-scores at every precision: MiniLM-L6,
# SNIP at 90 % and 95 %, Houlsby (lr 3e-3) and LoRA (lr 2e-3) on SST-2, STS-B and MRPC, and the
# random pruner at 95 % on SST-2, then runs
# the benchmark. By default the settings of the committed results (4k training examples, 2
# epochs, full dev sets: about 10 minutes a run on two CPU cores); at 2k examples and 1 epoch the
# 95% MRPC and STS-B runs collapsed to chance level, leaving nothing to measure a drop on.
#
#   bash benchmarks/checkpoint_size_runs.sh [RUNS_DIR]      (default runs/checkpoint-size)
#   (GLUE TSVs from DATA, default ../shared/data/glue)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-runs/checkpoint-size}
TRAIN=${TRAIN:-4000}
EPOCHS=${EPOCHS:-2}
EVAL=${EVAL:-all}
DATA=${DATA:-../shared/data/glue}
SPARSITIES=${SPARSITIES:-"0.9 0.95"}
eval_flag=()
[ "$EVAL" != all ] && eval_flag=(--max-eval-samples "$EVAL")
run() { # task adapter pruner sparsity
  local out="$RUNS/$1-$2-$3$4" lr=3e-3
  [ "$2" = lora ] && lr=2e-3
  [ -f "$out/final.json" ] && return
  python -m sparseadapter train --task "$1" --model minilm --adapter "$2" \
    --pruner "$3" --sparsity "$4" --data-dir "$DATA" --max-train-samples "$TRAIN" "${eval_flag[@]}" \
    --max-length 128 --epochs "$EPOCHS" --batch-size 32 --lr "$lr" --lr-density-exponent 0 --output "$out" --quiet
}
for task in sst2 stsb mrpc; do
  for adapter in houlsby lora; do
    for s in $SPARSITIES; do run "$task" "$adapter" snip "$s"; done
  done
done
for adapter in houlsby lora; do run sst2 "$adapter" random 0.95; done  # the random pruner's goal
python benchmarks/checkpoint_size.py --runs "$RUNS"
