#!/usr/bin/env bash
# The main job on a fresh machine: install, then build a FAISS index over the sample corpus with
# the bundled Gemma 3 270M (Token Prepending on, the settings chosen for retrieval) and answer a
# few questions from it, by dense and by hybrid (BM25 + dense) search.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
TP=.venv/bin/tp-rag
INDEX="${TP_RAG_DEMO_INDEX:-.demo-index}"
$TP index build examples/data/corpus.jsonl "$INDEX" --overwrite --preset gemma-3-270m-retrieval
$TP info "$INDEX"
$TP search "$INDEX" -k 3 --mode dense \
  "What is the highest mountain in the world?" \
  "How do plants turn sunlight into energy?" \
  "Why can early tokens not see later ones in a decoder?"
$TP search "$INDEX" -k 3 --mode hybrid "Everest height in metres"
