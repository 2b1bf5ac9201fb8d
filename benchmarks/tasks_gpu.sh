#!/usr/bin/env bash
# The SQuAD and XSum cells of benchmarks/tasks.py on one CUDA GPU (about 8 minutes on an H200).
# Expects in /tmp/stage: whl/ (transformers 4.57.6, tokenizers, huggingface_hub, adapters 1.3,
# peft, accelerate, nltk, rouge-score, gguf wheels), data/{squad,xsum}, minilm/ (MiniLM-L6 with
# fp16 weights) and smollm2.gguf; writes the records and the report to $OUT.
set -uo pipefail
repo=$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site /tmp/stage/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$repo/src HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
python3 -c "from pathlib import Path; from sparseadapter.models import _convert_gguf
_convert_gguf(Path('/tmp/stage/smollm2.gguf'), Path('/tmp/stage/smollm2'))" || exit 1
nvidia-smi --query-gpu=name,memory.total --format=csv
limit=${LIMIT:-480}
timeout "$limit" python3 benchmarks/tasks.py --task squad --adapters houlsby lora \
    --model /tmp/stage/minilm --data-dir /tmp/stage/data/squad --parallel 9 --runs-dir /tmp/runs \
    > "$OUT/squad.log" 2>&1 &
timeout "$limit" python3 benchmarks/tasks.py --task xsum --adapters lora \
    --model /tmp/stage/smollm2 --data-dir /tmp/stage/data/xsum --parallel 9 --runs-dir /tmp/runs \
    --extra "--eval-batch-size 64 --select last --set train.eval_each_epoch=false" > "$OUT/xsum.log" 2>&1 &
wait
cp benchmarks/results/tasks_runs.jsonl "$OUT/" 2>/dev/null
tail -5 "$OUT/squad.log" "$OUT/xsum.log"
