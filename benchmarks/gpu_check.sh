#!/usr/bin/env bash
# GPU readiness check for a short GPU loan (about 8 minutes on one H100, no internet needed):
# pytest -m gpu, the grouplocal-vs-MegaBlocks layer benchmark at both paper shapes, and the
# memory plan vs torch.cuda.max_memory_allocated on a real-shape slice of each paper model.
# Appends a dated table to docs/benchmarks.md. Usage: benchmarks/gpu_check.sh [--dry-run]
set -euo pipefail
cd "$(dirname "$0")/.."
exec python benchmarks/gpu_check.py "$@"
