#!/usr/bin/env bash
# Every full Gemma 3 270M result in eval/results, in the order they were made; each step writes
# its own files, and the grid's all-layer states are stored (~/.cache/tp-rag/eval/layers), so a
# stopped run resumes. Run from the repository root:
#   bash eval/scripts/run_suite.sh
# Environment: TP_RAG_DATA (default ../shared/data), PY (python). On the 2-core CPU this took
# several hours (SciFact: 10-12 min per full-corpus pass in bfloat16 on an AMX CPU); on a GPU, minutes.
# Needs transformers >= 5.24 (5.17 converts the bundled GGUF with a character-level tokenizer;
# the harness refuses that).
set -euo pipefail
PY=${PY:-python}
R=eval/results
step() { echo "=== $(date -u +%H:%M:%S) $*" >&2; }

step "English STS-B dev layer sweeps, one per family (the best TP row sets the gemma-3-270m preset)"
$PY -m tp_rag_eval.sweep --prompt prompteol --tp-exits 2 3 4 5 6 7 8 9 10 --batch-size 64 --out-dir $R
$PY -m tp_rag_eval.sweep --prompt pretended_cot --tp-exits 4 5 3 6 2 7 8 9 10 --dtype float32 --batch-size 64 --out-dir $R
$PY -m tp_rag_eval.sweep --prompt knowledge --tp-exits 5 4 3 6 2 7 8 9 10 --dtype float32 --batch-size 64 --out-dir $R
# MetaEOL on a seeded 500 pairs (8 templates: ~9x PromptEOL's cost); sets gemma-3-270m-metaeol
$PY -m tp_rag_eval.sweep --prompt metaeol --tp-exits 4 5 3 6 2 7 8 9 10 --sample 500 --seed 0 --dtype float32 --batch-size 64 --out-dir $R

step "STS test sets"
$PY -m tp_rag_eval.sts --only-minilm --tasks STSB-dev STSB-test SICK-R-test STS12 --out $R/sts_minilm.json
for p in prompteol pretended_cot knowledge; do
    $PY -m tp_rag_eval.sts --prompt $p --mode both --from-sweep $R --batch-size 64 --out $R/sts_$p.json
done
# MetaEOL: about two hours per mode here (8 templates); its layers from the seeded 500-pair sweep
$PY -m tp_rag_eval.sts --prompt metaeol --mode both --from-sweep $R --batch-size 64 --dtype float32 --out $R/sts_metaeol.json

step "Ablation on a seeded 300-pair dev sample"
E=$($PY -c "import json; print(json.load(open('$R/sweep_stsb_dev_prompteol.json'))['results']['best']['tp']['tp_exit'])")
S=(--prompt prompteol --sample 300 --seed 0 --batch-size 64 --out-dir $R/ablation)
$PY -m tp_rag_eval.sweep "${S[@]}" --tp-exits $E --tag base
$PY -m tp_rag_eval.sweep "${S[@]}" --tp-exits $E --no-vanilla --pst-init zeros --tag pst-zeros
$PY -m tp_rag_eval.sweep "${S[@]}" --tp-exits $E --no-vanilla --pst-init pad --tag pst-pad
$PY -m tp_rag_eval.sweep "${S[@]}" --tp-exits $E --no-vanilla --pst-init random --tag pst-random
$PY -m tp_rag_eval.sweep "${S[@]}" --tp-exits $E --no-vanilla --tp-start 0 --tag tp-start-0
$PY -m tp_rag_eval.sweep "${S[@]}" --tp-exits $E --no-preprocess --tag no-preprocess

step "Classification (SentEval transfer; seeded 500 items per split, TREC 1,500)"
T=(MR CR SUBJ MPQA SST2 MRPC)
$PY -m tp_rag_eval.transfer --only-minilm --limit 500 --tasks "${T[@]}" --out $R/transfer_minilm_limit500.json
$PY -m tp_rag_eval.transfer --only-minilm --limit 1500 --tasks TREC --out $R/transfer_minilm_trec_limit1500.json
for p in prompteol pretended_cot; do
    $PY -m tp_rag_eval.transfer --prompt $p --mode both --from-sweep $R --limit 500 --tasks "${T[@]}" --batch-size 64 --dtype float32 --out $R/transfer_${p}_limit500.json
    $PY -m tp_rag_eval.transfer --prompt $p --mode both --from-sweep $R --limit 1500 --tasks TREC --batch-size 64 --dtype float32 --out $R/transfer_${p}_trec_limit1500.json
done
for m in vanilla tp; do  # Knowledge Enhancement: one file per mode (they ran in parallel)
    $PY -m tp_rag_eval.transfer --prompt knowledge --mode $m --from-sweep $R --limit 500 --tasks "${T[@]}" --batch-size 64 --dtype float32 --out $R/transfer_knowledge_${m}_limit500.json
    $PY -m tp_rag_eval.transfer --prompt knowledge --mode $m --from-sweep $R --limit 1500 --tasks TREC --batch-size 64 --dtype float32 --out $R/transfer_knowledge_${m}_trec_limit1500.json
done
for m in vanilla tp; do  # MetaEOL: 8 templates per sentence, so bf16 (about 30 min per mode on AMX)
    $PY -m tp_rag_eval.transfer --prompt metaeol --mode $m --from-sweep $R --limit 500 --tasks "${T[@]}" --batch-size 64 --dtype bfloat16 --out $R/transfer_metaeol_${m}_limit500.json
    $PY -m tp_rag_eval.transfer --prompt metaeol --mode $m --from-sweep $R --limit 1500 --tasks TREC --batch-size 64 --dtype bfloat16 --out $R/transfer_metaeol_${m}_trec_limit1500.json
done

step "Classification on the full SentEval sets (one file per task and mode; bf16: 0.41x fp32 time on AMX, eval/bench dtype)"
for m in vanilla tp; do DTYPE=bfloat16 PY=$PY bash eval/scripts/transfer_full.sh prompteol $m; done
$PY -m tp_rag_eval.transfer --only-minilm --tasks MR CR SUBJ MPQA SST2 TREC MRPC --out $R/transfer_full/minilm.json

step "Second model: Qwen2.5-Coder 0.5B (needs the qwen-eval extra): dev sweep, STS test, classification"
Q=$R/qwen2.5-coder-0.5b
$PY -m tp_rag_eval.sweep --model qwen2.5-coder-0.5b --prompt prompteol --sample 500 --seed 0 \
    --tp-exits 5 4 3 6 2 7 8 9 10 --dtype float32 --batch-size 64 --overwrite --out-dir $Q/sample500
$PY -m tp_rag_eval.sweep --model qwen2.5-coder-0.5b --prompt prompteol --tp-exits 2 3 4 5 6 7 8 9 10 \
    --dtype float32 --batch-size 64 --out-dir $Q  # the session ran it as two processes and --merge
$PY -m tp_rag_eval.sts --model qwen2.5-coder-0.5b --prompt prompteol --mode both --from-sweep $Q \
    --batch-size 64 --dtype float32 --out $Q/sts_prompteol.json
for m in vanilla tp; do  # one file per mode (they ran in parallel, one per core)
    QA=(--model qwen2.5-coder-0.5b --prompt prompteol --from-sweep $Q --batch-size 64 --dtype float32 --mode $m)
    $PY -m tp_rag_eval.transfer "${QA[@]}" --limit 500 --tasks "${T[@]}" --out $Q/transfer_prompteol_${m}_limit500.json
    $PY -m tp_rag_eval.transfer "${QA[@]}" --limit 1500 --tasks TREC --out $Q/transfer_prompteol_${m}_trec_limit1500.json
done
for m in vanilla tp; do MODEL=qwen2.5-coder-0.5b DTYPE=bfloat16 PY=$PY bash eval/scripts/transfer_full.sh prompteol $m; done

step "SciFact: full-corpus layer grids (choices on qrels/train.tsv) and the ideas table"
G=$R/grid_scifact
$PY -m tp_rag_eval.grid --out $G/passage_eol --dtype bfloat16 --max-length 256 --prompts passage_eol \
    --sts-prompts knowledge --tp-exits 3 4 5 --batch-size 32
$PY -m tp_rag_eval.grid --out $G/prompteol --dtype bfloat16 --max-length 256 --prompts prompteol \
    --sts-prompts knowledge --tp-exits 4 --batch-size 32
for g in passage_eol prompteol; do $PY -m tp_rag_eval.grid_report --grid $G/$g --out $G/$g/README.md; done
$PY -m tp_rag_eval.retrieval_ideas --grid $G/passage_eol $G/prompteol --out $G
$PY -m tp_rag_eval.beir_eval --data "${TP_RAG_DATA:-../shared/data}/beir/scifact" --split test \
    --systems bm25 minilm --out $R/beir_scifact_test_reference.json

step "SciFact document views (subset: 300 queries per split, 1,000 documents)"
E=$($PY -c "import json; print(json.load(open('$G/passage_eol/runs.json'))['results']['passage_eol/tp']['settings']['tp_exit'])")
V=$R/grid_scifact_views
COMMON=(--dtype bfloat16 --max-docs 1000 --max-queries 300 --prompts passage_eol --sts-prompts knowledge
        --no-vanilla --tp-exits "$E" --batch-size 32 --max-length 256)
view() { out=$1; shift; $PY -m tp_rag_eval.grid --out $V/$out "${COMMON[@]}" "$@";
         $PY -m tp_rag_eval.grid_report --grid $V/$out --out $V/$out/README.md; }
view title_256
view no_title_256 --no-title
view chunk150_max --chunk-words 150 --chunk-agg max
view chunk150_mean --chunk-words 150 --chunk-agg mean

step "The default RAG path on a 400-document SciFact subset (sets the retrieval pooling and layer)"
(cd eval && $PY -m tp_rag_eval.rag_default --docs 400 --train-queries 60 --test-queries 60 --threads 1 \
    --systems tp tp-last tp-mean echo tp-layers vanilla-mean vanilla minilm pseudo \
    --out ../eval/results/rag_default_400_pooling)

step "The default RAG path on the full SciFact corpus (sets the fusion default; the goals of issue 11)"
(cd eval && $PY -m tp_rag_eval.rag_default --threads 1 --systems tp pseudo minilm vanilla-mean --out ../eval/results/rag_default_full)
# echo: an hour's pass of its own, added to the same table (and every row timed again)
(cd eval && $PY -m tp_rag_eval.rag_default --threads 1 --systems echo --add --out ../eval/results/rag_default_full)

step "tp-rag tune, as documented in the README"
mkdir -p $R/tune
TP_RAG_PRESETS=$R/tune/presets.json tp-rag tune --pairs "${TP_RAG_DATA:-../shared/data}/senteval/STS/STSBenchmark/sts-dev.csv" \
    --limit 300 --tp-exits 3,4,5 --dtype float32 --save-preset gemma-3-270m-tuned \
    --heatmap $R/tune/tune_stsb_dev300.png --json $R/tune/tune_stsb_dev300.json > $R/tune/tune_stsb_dev300.txt

step "tables"
$PY -m tp_rag_eval.report > $R/TABLES.md
step done
