#!/usr/bin/env bash
# Set up (CPU build of torch; everything else from pyproject) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q "torch==2.13.0" "triton==3.8.0"
python3 -m pip install -q -e ".[test,plot,report]"  # test: optimum-quanto (FP8 T5), scikit-image (SSIM), av
# The ML.ENERGY data toolkit reads our results in tests; it needs no torch (field notes 7).
python3 -m pip install -q --no-deps "mlenergy-data==0.4.0"
# torchao for the FP8 denoiser's CPU test, beside the environment rather than in it: where it is
# installed, diffusers imports it with every pipeline (and prints to stderr).
[ -d .cache/torchao-0.18.0/torchao ] || \
  python3 -m pip install -q --no-deps --target .cache/torchao-0.18.0 "torchao==0.18.0"
python3 -m pytest "$@"
