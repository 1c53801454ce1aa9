#!/usr/bin/env bash
# The whole Gemma 3 270M evaluation, most important first; every step writes its own result
# file, so a run that is stopped keeps what it finished. Run from the repository root:
#   bash eval/scripts/run_suite.sh
# Environment: DATA (default ../shared/data), RESULTS (eval/results), BEIR_CACHE (embedding
# cache for the SciFact corpus; default ~/.cache/tp-rag/eval), BS / DOC_BS (batch sizes),
# PY (python). Needs a transformers whose GGUF conversion keeps Gemma 3's BPE merges (5.24 does,
# 5.17 builds a character-level tokenizer; the harness refuses that). On a GPU the suite takes
# minutes; on a 2-core CPU, many hours (SciFact: ~45 min
# per configuration).
set -u
DATA=${DATA:-../shared/data}
RES=${RESULTS:-eval/results}
BS=${BS:-128}
DOC_BS=${DOC_BS:-32}
PY=${PY:-python}
EXITS=${EXITS:-"2 3 4 5 6 7 8 9 10"}
CACHE_ARG=()
[ -n "${BEIR_CACHE:-}" ] && CACHE_ARG=(--cache-dir "$BEIR_CACHE")
STS_TASKS=(STSB-test SICK-R-test STS12)
step() { echo "=== $(date -u +%H:%M:%S) $*" >&2; }

for prompt in prompteol pretended_cot; do
  step "sweep $prompt"
  $PY -m tp_rag_eval.sweep --data "$DATA" --prompt $prompt --tp-exits $EXITS --batch-size $BS --out-dir "$RES"
  step "sts $prompt"
  $PY -m tp_rag_eval.sts --data "$DATA" --prompt $prompt --mode both --from-sweep "$RES" \
      --tasks "${STS_TASKS[@]}" --batch-size $BS --out "$RES/sts_$prompt.json"
  step "scifact corpus $prompt"
  $PY -m tp_rag_eval.beir_eval --data "$DATA/beir/scifact" --split test --encode-only \
      --systems $prompt/vanilla $prompt/tp --from-sweep "$RES" --batch-size $DOC_BS "${CACHE_ARG[@]}"
done

# MetaEOL averages 8 templates (8x the cost): vanilla and the TP range PromptEOL chose on dev.
best=$($PY -c "import json,sys; print(json.load(open(sys.argv[1]))['results']['best']['tp']['tp_exit'])" "$RES/sweep_stsb_dev_prompteol.json")
step "sweep metaeol (tp_exit $best)"
$PY -m tp_rag_eval.sweep --data "$DATA" --prompt metaeol --tp-exits $best --batch-size $BS --out-dir "$RES"
step "sts metaeol"
$PY -m tp_rag_eval.sts --data "$DATA" --prompt metaeol --mode both --from-sweep "$RES" \
    --tasks "${STS_TASKS[@]}" --batch-size $BS --out "$RES/sts_metaeol.json"
step done
