#!/usr/bin/env bash
# The quality benchmark v2 on one CUDA GPU in under ~9 minutes: many runs at once, one process
# each, all on the same device (every comparison's arms are trained there, never mixed with CPU
# records: the report compares within one device).
#
#   OUT=/some/folder PYTHON=.venv/bin/python bash benchmarks/quality_v2_gpu.sh [extra options]
#
# Records go to $OUT/quality_v2_runs.jsonl (appended: carry an earlier file there to resume);
# afterwards append its lines to benchmarks/results/quality_v2_runs.jsonl and rebuild the report
# with `python benchmarks/quality_v2.py --report-only`. Extra options replace the defaults below
# (e.g. --tasks rte --adapters lora). Needs the MiniLM package and ../shared/data/glue (or
# --data-dir) on the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
OUT=${OUT:?set OUT to the folder for the records}
WORKERS=${WORKERS:-12}
mkdir -p "$OUT"
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
defaults=(--tasks mrpc --adapters houlsby
          --arms dense snip40 snip-random40 snip-rowshuffle40 narrow40)
if [ $# -eq 0 ]; then set -- "${defaults[@]}"; fi
common=(--workers "$WORKERS" --runs-dir /tmp/quality_v2_runs --records "$OUT/quality_v2_runs.jsonl")
# --max-minutes: a worker starts no run that its longest run so far says would end past 7.5
# minutes; timeout stops each worker at 8.5 (finished runs are recorded line by line as they end)
for i in $(seq 0 $((WORKERS - 1))); do
    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 timeout 510 "$PYTHON" benchmarks/quality_v2.py "$@" \
        "${common[@]}" --worker-index "$i" --max-minutes 7.5 > "$OUT/worker$i.log" 2>&1 &
done
wait || true
"$PYTHON" benchmarks/quality_v2.py "$@" "${common[@]}" --report-only
tail -n 3 "$OUT"/worker*.log
wc -l "$OUT/quality_v2_runs.jsonl"
