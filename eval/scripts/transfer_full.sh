#!/usr/bin/env bash
# The classification table on the full SentEval sets, one task per result file (a stopped run
# keeps its finished tasks, and the embedding cache keeps every chunk it wrote), cheapest task
# first. One mode per process, so vanilla and TP can run side by side, one per core:
#   bash eval/scripts/transfer_full.sh prompteol vanilla &  bash eval/scripts/transfer_full.sh prompteol tp
# DTYPE (default float32) sets the precision: bfloat16 takes 0.41x its time on an AMX CPU (eval/bench dtype).
# MODEL=qwen2.5-coder-0.5b runs an extra evaluation model (its layers from its own sweeps in
# eval/results/<MODEL>/, results in eval/results/<MODEL>/transfer_full/).
# Then one table: python -m tp_rag_eval.transfer --render <OUT>/*.json --md <OUT>/TABLE.md
set -euo pipefail
PROMPT=${1:?prompt family}; MODE=${2:?vanilla or tp}
PY=${PY:-.venv/bin/python}; DTYPE=${DTYPE:-float32}; MODEL=${MODEL:-}
SWEEPS=eval/results${MODEL:+/$MODEL}; OUT=$SWEEPS/transfer_full
mkdir -p "$OUT"
for TASK in CR TREC MPQA SST2 MRPC SUBJ MR; do
  [ -f "$OUT/${PROMPT}_${MODE}_${TASK}.json" ] && continue
  OMP_NUM_THREADS=1 $PY -m tp_rag_eval.transfer ${MODEL:+--model "$MODEL"} --prompt "$PROMPT" --mode "$MODE" \
    --from-sweep "$SWEEPS" --tasks "$TASK" --batch-size 64 --dtype "$DTYPE" --out "$OUT/${PROMPT}_${MODE}_${TASK}.json"
done
