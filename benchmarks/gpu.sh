#!/usr/bin/env bash
# Benchmark cells on one CUDA GPU that is reached by short calls, each carrying at most a few
# folders (64 MiB): the inputs are staged over several calls and the cells run in the background
# between them, then a last call collects their records.
#
#   gpu.sh stage DIR...        copy DIRs into /tmp/stage (*.whl files are installed into
#                              /tmp/site) and the repository into /tmp/repo
#   gpu.sh squad               SQuAD cells of tasks.py (MiniLM-L6 from /tmp/stage/minilm.tar)
#   gpu.sh xsum                XSum cells of tasks.py (SmolLM2 GGUF from the parts /tmp/stage/gg.*)
#   gpu.sh quality-v2 ARGS...  quality_v2.py ARGS on $MODEL (minilm: /tmp/stage/minilm.tar;
#                              mpnet-base: the parts /tmp/stage/mpnet-base.tar.*, made by
#                              `gpu.sh pack mpnet-base DIR`), GLUE from /tmp/stage/glue, bf16,
#                              12 workers, no run started that would end past $MINUTES (8)
#                              unless ARGS say otherwise
#   gpu.sh pack ALIAS DIR      (here, not on the GPU) split the alias's model folder into tar
#                              parts of 56 MiB, one per folder DIR/1, DIR/2, ...: one stage call each
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

staged() { # the alias's model folder /tmp/stage/NAME, from NAME.tar or its parts NAME.tar.*
    local name=$1
    [ -f "/tmp/stage/$name/config.json" ] && return
    mkdir -p "/tmp/stage/$name"
    if [ -f "/tmp/stage/$name.tar" ]; then
        tar -xf "/tmp/stage/$name.tar" -C "/tmp/stage/$name" || exit 1
    elif compgen -G "/tmp/stage/$name.tar.*" > /dev/null; then
        cat "/tmp/stage/$name".tar.* | tar -xf - -C "/tmp/stage/$name" || exit 1
    else
        echo "no /tmp/stage/$name.tar or $name.tar.* parts: stage them first" >&2
        exit 1
    fi
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
    staged minilm
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
    staged "${MODEL:-minilm}"
    start quality_v2 python3 benchmarks/quality_v2.py --model "/tmp/stage/${MODEL:-minilm}" \
        --data-dir /tmp/stage/glue --runs-dir /tmp/runs/q2 \
        --records /tmp/runs/quality_v2_runs.jsonl --mixed-precision bf16 --workers 12 \
        --max-minutes "${MINUTES:-8}" "$@"
    ;;
pack)
    alias=$1 out=$2
    folder=$(python3 -c "from sparseadapter.models import resolve_model as r; print(r('$alias'))") ||
        exit 1
    mkdir -p "$out/parts"
    tar -cf - -C "$folder" --exclude=sparseadapter-cache.json . |
        split -b 56m -d - "$out/parts/$alias.tar." || exit 1
    i=0
    for part in "$out/parts/$alias".tar.*; do
        i=$((i + 1))
        mkdir -p "$out/$i" && mv "$part" "$out/$i/"
    done
    rmdir "$out/parts"
    du -sh "$out"/*
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
    echo "usage: gpu.sh stage DIR... | squad | xsum | quality-v2 ARGS... | pack ALIAS DIR |" \
        "collect SECONDS" >&2
    exit 2
    ;;
esac
