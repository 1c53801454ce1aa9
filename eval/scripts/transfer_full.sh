#!/usr/bin/env bash
# The classification table on the full SentEval sets, one task per result file (a stopped run
# keeps its finished tasks, and the embedding cache keeps every chunk it wrote), cheapest task
# first. One mode per process, so vanilla and TP can run side by side, one per core:
#   bash eval/scripts/transfer_full.sh prompteol vanilla &  bash eval/scripts/transfer_full.sh prompteol tp
# DTYPE (default float32) sets the precision: bfloat16 is ~3x faster on an AMX CPU.
# Then one table: python -m tp_rag_eval.transfer --render eval/results/transfer_full/*.json --md eval/results/transfer_full/TABLE.md
set -euo pipefail
PROMPT=${1:?prompt family}; MODE=${2:?vanilla or tp}
PY=${PY:-.venv/bin/python}; OUT=eval/results/transfer_full; DTYPE=${DTYPE:-float32}
mkdir -p "$OUT"
for TASK in CR TREC MPQA SST2 MRPC SUBJ MR; do
  [ -f "$OUT/${PROMPT}_${MODE}_${TASK}.json" ] && continue
  OMP_NUM_THREADS=1 $PY -m tp_rag_eval.transfer --prompt "$PROMPT" --mode "$MODE" --from-sweep eval/results \
    --tasks "$TASK" --batch-size 64 --dtype "$DTYPE" --out "$OUT/${PROMPT}_${MODE}_${TASK}.json"
done
