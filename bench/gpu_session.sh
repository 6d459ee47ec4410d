#!/usr/bin/env bash
# This session's GPU check in one command (under the 10-minute limit): every new GPU path's tests,
# the native engine's step timings, a short in-flight load run, and a wheel's NVRTC build.
#   here:  cmake -S . -B build/kernels -DT5RT_CUDA_ARCHS=90 && cmake --build build/kernels
#          ../shared/gpu/stage.sh ort   (send parts 1..4, then the last with this script)
#   there: bash .gpu/p5/put.sh && bash .gpu/p5/install.sh && bash bench/gpu_session.sh
#          (carrying .gpu/p5 and build/kernels)
set -o pipefail
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
t0=$(date +%s)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/device.txt"
python -c "import t5rt" 2>/dev/null || python -m pip install --no-deps --no-build-isolation -q -e . >/dev/null
# the sm_90 fatbin built on the CPU machine (an explicit path is trusted, still ABI-checked)
[ -f build/kernels/t5rt_kernels.fatbin ] && export T5RT_KERNELS_FATBIN=$PWD/build/kernels/t5rt_kernels.fatbin
left() { echo $(( ${BUDGET:-570} - ($(date +%s) - t0) )); }
# without onnxruntime-gpu staged (ORT=0): the tests that need only cupy (kernels, decoding, native fp32
# with its encoder on ORT's CPU EP); onnx-graphsurgeon for exports from $EXTRA_SITE
ORT=${ORT:-1}
[ -n "${EXTRA_SITE:-}" ] && export PYTHONPATH=$PYTHONPATH:$EXTRA_SITE
TESTS=${TESTS:-tests/test_kernels.py tests/test_decoding_gpu.py tests/test_service.py tests/test_native.py tests/test_gpu_runtime.py tests/test_cli.py}
timeout $(( $(left) - ${RESERVE:-200} )) python -m pytest -q -rs -p no:cacheprovider -o addopts="" -m gpu \
    $TESTS -k "not large" 2>&1 | tee "$OUT/gpu_tests.log" | tail -40
echo "== tests done at $(( $(date +%s) - t0 ))s"
(cd bench/kernels && timeout $(( $(left) - 110 )) python native_step.py --models t5-small,t5-base \
    --precisions float32,bfloat16 --batches 1,32 --json "$OUT/native_step.json") 2>&1 | tee "$OUT/native_step.md" | tail -25
echo "== native bench done at $(( $(date +%s) - t0 ))s"
[ "$ORT" = 1 ] && timeout $(( $(left) - 50 )) python -m t5rt.bench --load --model t5-small --precision bf16 --rates 20,80,200 \
    --duration 5 --drain 20 --calibrate 12 --systems t5rt,t5rt-serial --cache-dir /tmp/t5rt-bench \
    --json "$OUT/load.json" --plot "$OUT/load.png" 2>&1 | tee "$OUT/load.md" | tail -25
echo "== load bench done at $(( $(date +%s) - t0 ))s"
timeout $(( $(left) )) bash bench/h100_tables.sh wheel 2>&1 | tail -5
echo "== total $(( $(date +%s) - t0 ))s"
