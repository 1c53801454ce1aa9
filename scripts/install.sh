#!/usr/bin/env bash
# Create .venv and install tp-rag, its evaluation/test extras and both integrations (editable).
# torch is pinned to 2.13.0: an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[eval,serve,ray,test]" -e "integrations/langchain[test,examples]" -e "integrations/llama-index[test,examples]"
.venv/bin/python -c "import tp_rag, langchain_tp_rag, llama_index.embeddings.tp_rag; print('tp-rag', tp_rag.__version__, 'installed in .venv')"
