#!/usr/bin/env bash
# Set up (CPU build of torch; everything else from pyproject) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q "torch==2.13.0" "triton==3.8.0"
python3 -m pip install -q -e ".[test]"
python3 -m pytest "$@"
