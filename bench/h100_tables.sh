#!/usr/bin/env bash
# How every committed H100 table in bench/results/ is made, one step per GPU command (each under
# the 10-minute limit; results under $OUT). Tables quoted in bench/README.md name their step.
#
#   here:  ../shared/gpu/stage.sh ort rtx && python -m t5rt.bench.optimum_site .peers/optimum --python-version 3.12
#   there: send the parts back to back, the last one with
#          bash .gpu/pN/put.sh && bash .gpu/pN/install.sh && bash bench/h100_tables.sh STEP
#          (carrying .gpu/pN; steps that run Optimum also carry .peers/optimum)
set -euo pipefail
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
python -c "import t5rt" 2>/dev/null || python -m pip install --no-deps --no-build-isolation -q -e .
[ -f build/kernels/t5rt_kernels.fatbin ] || { cmake -S . -B build/kernels >/dev/null && cmake --build build/kernels -j 16; }
B="python -m t5rt.bench --runs 5 --warmup 1 --cache-dir /tmp/t5rt-bench"
OPT="--optimum-python .peers/optimum/python"
table() {  # table NAME ARGS...: one bench run -> $OUT/NAME.md + $OUT/NAME.json
  local name=$1; shift
  $B "$@" --json "$OUT/$name.json" > "$OUT/$name.md" 2> "$OUT/$name.log" || { tail -20 "$OUT/$name.log"; return 1; }
  cat "$OUT/$name.md"
}
case "${1:-tests}" in
  tests)  # every gpu/trt test (test_gpu_runtime's t5-large fp16 case alone takes ~100 s)
      pytest -m "gpu or trt" -q -rs -p no:cacheprovider -o addopts="" tests 2>&1 | tee "$OUT/gpu_tests.log" | tail -30 ;;
  trt)    # TensorRT-RTX build check: every graph of t5-small and t5-base, both cache forms
      python bench/trt_build_check.py --sizes small --force --out "$OUT/h100-trt-build-check-small"
      python bench/trt_build_check.py --sizes base --out "$OUT/h100-trt-build-check-base" ;;
  small-fp32) table h100-t5-small-fp32 --model t5-small --precision fp32 --batch-sizes 1,8,32 --beams 1,4 --peers hf,optimum $OPT ;;
  small-fp16) table h100-t5-small-fp16 --model t5-small --precision fp16 --batch-sizes 1,8,32 --beams 1,4 --peers hf,optimum $OPT ;;
  small-bf16) table h100-t5-small-bf16 --model t5-small --precision bf16 --batch-sizes 1,8,32 --beams 1,4 --peers hf ;;
  base-fp32)  table h100-t5-base-fp32 --model t5-base --precision fp32 --batch-sizes 1,8,32 --beams 1,4 --peers hf ;;
  base-fp16)  table h100-t5-base-fp16 --model t5-base --precision fp16 --batch-sizes 1,8,32 --beams 1,4 --peers hf ;;
  base-bf16)  table h100-t5-base-bf16 --model t5-base --precision bf16 --batch-sizes 1,8,32 --beams 1,4 --peers hf ;;
  large-fp16) table h100-t5-large-fp16 --model t5-large --precision fp16 --batch-sizes 1,8 --beams 1,4 --peers hf ;;
  large-bf16) table h100-t5-large-bf16 --model t5-large --precision bf16 --batch-sizes 1,8 --beams 1,4 --peers hf ;;
  compile)    table h100-hf-compile --model t5-small --precision fp32 --peers hf,hf-compile ;;
  curve)      table h100-t5-small-fp32-curve --model t5-small --precision fp32 --batch-sizes 1,8,32 \
                  --new-tokens 16,32,64,128 --peers hf --plot "$OUT/h100-t5-small-fp32-curve.png" ;;
  split)  # per-step split engine / decoding / host (RuntimeOptions(profile=True)) + ORT kernel counts
      for s in ${SPLIT:-t5-small:fp32 t5-base:fp32 t5-base:bf16}; do  # SPLIT="shape:precision ..."
        python bench/gpu_quick.py --shape ${s%%:*} --precision ${s##*:} --runs 8 --ort-ops \
            --out "$OUT/h100-step-split-${s%%:*}-${s##*:}.json" 2>&1 | grep -v Warning | tail -25
      done ;;
  alone)  # the README headline's baseline check: t5rt and HF eager each alone in its own process
      table h100-alone-t5rt-small-fp32 --model t5-small --precision fp32 --batch-sizes 1,32 --beams 1,4 --peers none
      table h100-alone-hf-small-fp32 --model t5-small --precision fp32 --batch-sizes 1,32 --beams 1,4 --peers hf --no-t5rt ;;
  wheel)  # a non-editable install (wheel) finds its CUDA sources and compiles them with NVRTC
      rm -rf /tmp/whl /tmp/t5rt-wheel && python -m pip wheel -q --no-deps --no-build-isolation . -w /tmp/whl
      python -m pip install -q --no-deps --target /tmp/t5rt-wheel /tmp/whl/t5rt-*.whl
      (cd /tmp && T5RT_KERNELS=nvrtc PYTHONPATH=/tmp/t5rt-wheel:$PYTHONPATH python -c "
import t5rt.kernels as k
assert str(k.KERNELS_DIR).startswith('/tmp/t5rt-wheel'), k.KERNELS_DIR
k.load(); print('wheel kernels:', k.KERNELS_DIR, len(k.kernel_sources()), 'sources;', k.source())") 2>&1 | tee "$OUT/wheel-nvrtc.log" ;;
  *)  echo "usage: bench/h100_tables.sh tests|trt|small-fp32|small-fp16|small-bf16|base-fp32|base-fp16|base-bf16|large-fp16|large-bf16|compile|curve|split|alone|wheel" >&2; exit 2 ;;
esac
