#!/usr/bin/env bash
# Set up and run the main job on the embedded default (synthetic TAVI phantom).
# Usage: bash scripts/demo.sh [taviseg demo args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/taviseg demo "$@"
