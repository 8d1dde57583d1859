#!/usr/bin/env bash
# Every GPU check of the package in one call of the device tool (about 9.5 minutes at most):
#
#   run(command="bash benchmarks/cuda_session.sh", timeout_s=600)
#
# In order, each part under its own time limit so that one slow part leaves the others' results:
#   1. the machine: GPU, driver, torch, transformers, timm;
#   2. the CUDA tests (pytest -m cuda; files that need the instructor's tools fail to import there
#      and are listed, not run);
#   3. NCCL: one torchrun process trains the ViT task, checkpoints, and resumes from the checkpoint;
#   4. attention alone, T = 512 .. 16384 (benchmarks/attention_memory.py), with its plot;
#   5. the training step of BERT-base and ViT-B/16 next to their peers, eager, then compiled
#      (benchmarks/training_speed.py).
# Everything goes to $OUT (the device tool's folder; benchmarks/cuda_out here without it):
# session.log and five JSON/PNG files. Copy the tables into benchmarks/RESULTS.md with the
# device, driver and torch version from the log's first lines.
# The device machine's python3 has its own torch (2.11 when last seen), not the pinned 2.13.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/cuda_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
LOG=$OUT/session.log

part() {  # part SECONDS TITLE COMMAND...: run COMMAND under a time limit, log its output and status
    local seconds=$1 title=$2
    shift 2
    echo "=== $title (limit ${seconds} s) ===" | tee -a "$LOG"
    local start=$SECONDS
    timeout -k 10 "$seconds" "$@" 2>&1 | tee -a "$LOG"
    echo "=== $title: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s ===" | tee -a "$LOG"
}

: >"$LOG"
part 30 "machine" bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; \
    $PY -c 'import sys, torch; print(sys.version); print(\"torch\", torch.__version__, torch.version.cuda)'; \
    $PY -c 'import transformers; print(\"transformers\", transformers.__version__)'; \
    $PY -c 'import timm; print(\"timm\", timm.__version__)'"
part 120 "CUDA tests" "$PY" -m pytest tests -m cuda -q -rfE -n 4 -p no:cacheprovider \
    --continue-on-collection-errors
part 45 "NCCL: train, checkpoint, resume" bash -c "\
    $PY -m torch.distributed.run --standalone --nproc-per-node 1 -m transformer_ref.train --task shapes \
        --steps 40 --backend nccl --log-every 10 --no-progress --checkpoint $OUT/nccl.pt --checkpoint-every 20 \
    && $PY -m torch.distributed.run --standalone --nproc-per-node 1 -m transformer_ref.train --task shapes \
        --steps 60 --backend nccl --log-every 10 --no-progress --checkpoint $OUT/nccl.pt --resume; \
    status=\$?; rm -f $OUT/nccl.pt; exit \$status"
part 90 "attention alone" "$PY" benchmarks/attention_memory.py --device cuda \
    --json "$OUT/attention_memory_cuda.json" --plot "$OUT/attention_memory_cuda.png"
part 100 "training step, eager" "$PY" benchmarks/training_speed.py --device cuda --no-compile \
    --json "$OUT/training_speed_cuda_eager.json"
part 200 "training step, compiled" "$PY" benchmarks/training_speed.py --device cuda --compile-only \
    --json "$OUT/training_speed_cuda_compiled.json"
