#!/usr/bin/env bash
# Run the whole test suite (tiny in-process models, the bundled Gemma 3 270M, and the real
# evaluation data in ../shared/data when it is there). Extra arguments go to pytest, e.g.
#   bash scripts/test.sh -m "not real_model"     # only the fast tests
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/install.sh
exec .venv/bin/python -m pytest tests integrations/langchain/tests integrations/llama-index/tests "$@"
