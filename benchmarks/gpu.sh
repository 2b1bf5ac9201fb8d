#!/usr/bin/env bash
# Benchmark cells on one CUDA GPU that is reached by short calls, each carrying at most a few
# folders (64 MiB): the inputs are staged over several calls and the cells run in the background
# between them, then a last call collects their records.
#
#   gpu.sh stage DIR...        copy DIRs into /tmp/stage (*.whl files are installed into
#                              /tmp/site) and the repository into /tmp/repo
#   gpu.sh squad               SQuAD cells of tasks.py (MiniLM-L6 from /tmp/stage/minilm.tar)
#   gpu.sh xsum                XSum cells of tasks.py (SmolLM2 GGUF from the parts /tmp/stage/gg.*)
#   gpu.sh quality-v2 ARGS...  quality_v2.py ARGS (MiniLM-L6 from /tmp/stage/minilm.tar, GLUE
#                              from /tmp/stage/glue), bf16, 12 workers, no run started that
#                              would end past $MINUTES (8) unless ARGS say otherwise
#   gpu.sh collect SECS        wait up to SECS for the started cells; records and logs to $OUT
#
# Every run uses bf16 mixed precision; the SQuAD/XSum cells score their dev/test set once, after
# the last epoch (no epoch is chosen on the set it is scored on). Records: /tmp/runs/*.jsonl.
set -uo pipefail
phase=$1
shift
export PYTHONPATH=/tmp/site:/tmp/repo/src HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
    OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
once="--mixed-precision bf16 --select last --set train.eval_each_epoch=false"

start() { # name, then the command; /tmp/runs/NAME.done holds its exit code when it ends
    local name=$1
    shift
    cd /tmp/repo || exit 1
    setsid nohup bash -c '"$@"; echo $? > "/tmp/runs/$0.done"' "$name" "$@" \
        > "/tmp/runs/$name.log" 2>&1 < /dev/null &
    echo "started $name: pid $!"
}

minilm() {
    [ -f /tmp/stage/minilm/config.json ] && return
    mkdir -p /tmp/stage/minilm && tar -xf /tmp/stage/minilm.tar -C /tmp/stage/minilm || exit 1
}

cells() { # task, then tasks.py options
    local task=$1
    shift
    start "$task" python3 benchmarks/tasks.py --task "$task" --runs-dir /tmp/runs \
        --records /tmp/runs/tasks_runs.jsonl "$@"
}

case $phase in
stage)
    mkdir -p /tmp/stage /tmp/runs /tmp/repo
    tar --exclude=./.gpu --exclude=./.whl --exclude=./.venv --exclude=./runs -cf - . |
        tar -C /tmp/repo -xf -
    for dir in "$@"; do
        if compgen -G "$dir/*.whl" > /dev/null; then
            python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
                --target /tmp/site "$dir"/*.whl || exit 1
        else
            cp -r "$dir"/. /tmp/stage/
        fi
    done
    du -sh /tmp/stage /tmp/site 2> /dev/null || true
    ;;
squad)
    minilm
    cells squad --adapters houlsby lora --parallel "${PARALLEL:-9}" --model /tmp/stage/minilm \
        --data-dir /tmp/stage/data/squad --extra "$once"
    ;;
xsum)
    cat /tmp/stage/gg.* > /tmp/stage/smollm2.gguf
    python3 -c "from pathlib import Path; from sparseadapter.models import _convert_gguf
_convert_gguf(Path('/tmp/stage/smollm2.gguf'), Path('/tmp/stage/smollm2'))" || exit 1
    cells xsum --adapters lora --parallel "${PARALLEL:-9}" --model /tmp/stage/smollm2 \
        --data-dir /tmp/stage/data/xsum --extra "$once --eval-batch-size 64"
    ;;
quality-v2)
    minilm
    start quality_v2 python3 benchmarks/quality_v2.py --model /tmp/stage/minilm \
        --data-dir /tmp/stage/glue --runs-dir /tmp/runs/q2 \
        --records /tmp/runs/quality_v2_runs.jsonl --mixed-precision bf16 --workers 12 \
        --max-minutes "${MINUTES:-8}" "$@"
    ;;
collect)
    deadline=$((SECONDS + ${1:-0}))
    # a finished background command can linger as a zombie: wait for its .done file instead
    while ((SECONDS < deadline)); do
        pending=0
        for log in /tmp/runs/*.log; do
            [ -e "$log" ] && [ ! -e "${log%.log}.done" ] && pending=1
        done
        ((pending)) || break
        sleep 5
    done
    nvidia-smi --query-gpu=name,utilization.gpu,memory.used --format=csv
    cp /tmp/runs/*.jsonl /tmp/runs/*.log "$OUT/" 2>/dev/null
    wc -l /tmp/runs/*.jsonl 2>/dev/null
    tail -n 4 /tmp/runs/*.log
    ;;
*)
    echo "usage: gpu.sh stage DIR... | squad | xsum | quality-v2 ARGS... | collect SECONDS" >&2
    exit 2
    ;;
esac
