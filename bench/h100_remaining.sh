#!/usr/bin/env bash
# The GPU work the 2026-11-22 session could not fit in its device time, in the order to run it on
# the lent H100 (each step well under the 10-minute command limit; results under $OUT).
#
#   here:  ../shared/gpu/stage.sh ort rtx && python -m t5rt.bench.optimum_site .peers/optimum --python-version 3.12
#   there: send the parts back to back, the last one with
#          bash .gpu/pN/put.sh && bash .gpu/pN/install.sh && bash bench/h100_remaining.sh STEP
#          (carrying .gpu/pN; steps 3-5 also carry .peers/optimum)
set -euo pipefail
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python -c "import t5rt" 2>/dev/null || python -m pip install --no-deps --no-build-isolation -q -e .
[ -f build/kernels/t5rt_kernels.fatbin ] || { cmake -S . -B build/kernels >/dev/null && cmake --build build/kernels -j 16; }
B="python -m t5rt.bench --runs 5 --warmup 1 --cache-dir /tmp/t5rt-bench"
case "${1:-1}" in
  1)  # every gpu/trt test, incl. the ORT load-time rewrite on CUDA (off by default there until this passes)
      pytest -m "gpu or trt" -q -rs -p no:cacheprovider -o addopts="" tests 2>&1 | tee "$OUT/gpu_tests.log" | tail -40 ;;
  2)  # TensorRT-RTX build check: in-place decoder step with the static cache length, then t5-base
      python bench/trt_build_check.py --sizes small --precisions fp32,fp16,bf16 --forms inplace --force --out "$OUT/trt-small-inplace"
      python bench/trt_build_check.py --sizes base --out "$OUT/trt-base" ;;
  3)  $B --model t5-small --precision fp16 --batch-sizes 1,8,32 --beams 1,4 --peers hf,optimum \
         --optimum-python .peers/optimum/python --json "$OUT/h100-t5-small-fp16.json" > "$OUT/h100-t5-small-fp16.md"
      $B --model t5-base --precision fp32 --batch-sizes 1,8,32 --beams 1,4 --peers hf \
         --json "$OUT/h100-t5-base-fp32.json" > "$OUT/h100-t5-base-fp32.md" ;;
  4)  $B --model t5-large --precision bf16 --batch-sizes 1,8 --beams 1,4 --peers hf \
         --json "$OUT/h100-t5-large-bf16.json" > "$OUT/h100-t5-large-bf16.md" ;;
  5)  $B --model t5-small --precision fp32 --peers hf,hf-compile > "$OUT/h100-hf-compile.md"
      $B --model t5-small --precision fp32 --batch-sizes 1,8,32 --new-tokens 16,32,64,128 --peers hf \
         --plot "$OUT/h100-t5-small-fp32-curve.png" --json "$OUT/h100-t5-small-fp32-curve.json" > /dev/null ;;
  *)  echo "usage: bench/h100_remaining.sh 1|2|3|4|5" >&2; exit 2 ;;
esac
