#!/usr/bin/env bash
# The SQuAD and XSum cells of benchmarks/tasks.py on one CUDA GPU that can only be reached by
# short calls, each carrying a few folders: the cells run in the background between calls.
#
#   tasks_gpu.sh stage DIR...   copy DIRs into /tmp/stage (*.whl files are installed into
#                               /tmp/site) and the repository into /tmp/repo
#   tasks_gpu.sh squad          start the SQuAD cells (MiniLM-L6 from /tmp/stage/minilm.tar)
#   tasks_gpu.sh xsum           start the XSum cells (SmolLM2 GGUF from the parts /tmp/stage/gg.*)
#   tasks_gpu.sh collect SECS   wait up to SECS for the cells, copy records and logs to $OUT
#
# Every run uses bf16 mixed precision and scores the dev/test set once, after the last epoch
# (no epoch is selected on the set it is scored on). Records: /tmp/runs/tasks_runs.jsonl.
set -uo pipefail
phase=$1
shift
export PYTHONPATH=/tmp/site:/tmp/repo/src HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
once="--mixed-precision bf16 --select last --set train.eval_each_epoch=false"

start() { # task, then the benchmark's own options
    local task=$1
    shift
    cd /tmp/repo || exit 1
    setsid nohup python3 benchmarks/tasks.py --task "$task" --runs-dir /tmp/runs \
        --records /tmp/runs/tasks_runs.jsonl "$@" > "/tmp/runs/$task.log" 2>&1 < /dev/null &
    echo "started $task: pid $!"
}

case $phase in
stage)
    mkdir -p /tmp/stage /tmp/runs /tmp/repo
    tar --exclude=./.gpu --exclude=./.whl --exclude=./runs -cf - . | tar -C /tmp/repo -xf -
    for dir in "$@"; do
        if compgen -G "$dir/*.whl" > /dev/null; then
            python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
                --target /tmp/site "$dir"/*.whl || exit 1
        else
            cp -r "$dir"/. /tmp/stage/
        fi
    done
    du -sh /tmp/stage /tmp/site
    ;;
squad)
    mkdir -p /tmp/stage/minilm && tar -xf /tmp/stage/minilm.tar -C /tmp/stage/minilm || exit 1
    start squad --adapters houlsby lora --parallel "${PARALLEL:-9}" --model /tmp/stage/minilm \
        --data-dir /tmp/stage/data/squad --extra "$once"
    ;;
xsum)
    cat /tmp/stage/gg.* > /tmp/stage/smollm2.gguf
    python3 -c "from pathlib import Path; from sparseadapter.models import _convert_gguf
_convert_gguf(Path('/tmp/stage/smollm2.gguf'), Path('/tmp/stage/smollm2'))" || exit 1
    start xsum --adapters lora --parallel "${PARALLEL:-9}" --model /tmp/stage/smollm2 \
        --data-dir /tmp/stage/data/xsum --extra "$once --eval-batch-size 64"
    ;;
collect)
    deadline=$((SECONDS + ${1:-0}))
    while pgrep -f benchmarks/tasks.py > /dev/null && ((SECONDS < deadline)); do sleep 5; done
    nvidia-smi --query-gpu=name,utilization.gpu,memory.used --format=csv
    cp /tmp/runs/tasks_runs.jsonl /tmp/runs/*.log "$OUT/" 2>/dev/null
    wc -l /tmp/runs/tasks_runs.jsonl 2>/dev/null
    tail -n 4 /tmp/runs/*.log
    ;;
*)
    echo "usage: tasks_gpu.sh stage DIR... | squad | xsum | collect SECONDS" >&2
    exit 2
    ;;
esac
