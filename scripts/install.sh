#!/usr/bin/env bash
# Create .venv and install tp-rag, its evaluation/test extras and both integrations (editable).
# torch is pinned to 2.13.0: an unpinned torch would pull a multi-GB CUDA build.
# Quiet by design: a few progress lines, pip's errors if any, and the final line.
# VERBOSE=1 shows pip's full output.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore PIP_PROGRESS_BAR=off
quiet=(--quiet --quiet)  # errors only (one --quiet still prints setuptools' build warnings)
[ "${VERBOSE:-0}" = 1 ] && quiet=()

step() { printf '[%s] %s\n' "$1" "$2"; }
pip() { .venv/bin/python -m pip install "${quiet[@]}" "$@"; }

step 1/4 "virtual environment (.venv)"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip --upgrade pip
step 2/4 "torch 2.13.0 (CPU)"
pip "torch==2.13.0"
step 3/4 "tp-rag with its eval, serve, ray and test extras, and the LangChain and LlamaIndex integrations"
pip -e ".[eval,serve,ray,test]" -e "integrations/langchain[test,examples]" -e "integrations/llama-index[test,examples]"
step 4/4 "check"
.venv/bin/python -c "import tp_rag, langchain_tp_rag, llama_index.embeddings.tp_rag; print('tp-rag', tp_rag.__version__, 'installed in .venv')"
