#!/usr/bin/env bash
# This session's GPU check in one command (under the 10-minute limit), stage by stage, each with its
# own time limit so that one hang costs only its stage: every new GPU path's tests, the native
# engine's step timings, a short in-flight load run, and a wheel's NVRTC build.
#   here:  cmake -S . -B build/kernels -DT5RT_CUDA_ARCHS=90 && cmake --build build/kernels
#          ../shared/gpu/stage.sh ort   (send parts 1..4, then the last with this script)
#   there: bash .gpu/p5/put.sh && bash .gpu/p5/install.sh && bash bench/gpu_session.sh [STAGES]
#          (carrying .gpu/p5 and build/kernels)
# STAGES (default all, in this order): kernels native nbench decoding runtime service cli load wheel
set -o pipefail
export PYTHONPATH=/tmp/site${EXTRA_SITE:+:$EXTRA_SITE} PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
t0=$(date +%s)
STAGES=${1:-kernels native nbench decoding runtime service cli load wheel}
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$OUT/device.txt"
python -c "import t5rt" 2>/dev/null || python -m pip install --no-deps --no-build-isolation -q -e . >/dev/null
# the sm_90 fatbin built on the CPU machine (an explicit path is trusted, still ABI-checked)
[ -f build/kernels/t5rt_kernels.fatbin ] && export T5RT_KERNELS_FATBIN=$PWD/build/kernels/t5rt_kernels.fatbin
left() { echo $(( ${BUDGET:-570} - ($(date +%s) - t0) )); }
# stage NAME SECONDS COMMAND...: runs when named in STAGES, within min(SECONDS, time left - 10)
stage() {
  local name=$1 secs=$2; shift 2
  [[ " $STAGES " == *" $name "* ]] || return 0
  local lim=$(( $(left) - 10 )); (( secs < lim )) && lim=$secs
  (( lim < 15 )) && { echo "== $name: skipped, no time left"; return 0; }
  echo "== $name (limit ${lim}s) at $(( $(date +%s) - t0 ))s"
  timeout -k 5 "$lim" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  tail -${TAIL:-15} "$OUT/$name.log"; echo "== $name rc=$rc at $(( $(date +%s) - t0 ))s"
}
gpu_tests() { python -m pytest -q -rs -p no:cacheprovider -o addopts="" -m gpu --durations=8 "$@"; }
stage kernels ${T_KERNELS:-90} gpu_tests tests/test_kernels.py
stage native ${T_NATIVE:-150} gpu_tests tests/test_native.py -k "not large"
stage nbench ${T_NBENCH:-120} bash -c "cd bench/kernels && python native_step.py --models ${MODELS:-t5-small,t5-base} \
    --precisions float32,bfloat16 --batches 1,32 --json $OUT/native_step.json"
stage decoding ${T_DECODING:-90} gpu_tests tests/test_decoding_gpu.py
stage runtime ${T_RUNTIME:-120} gpu_tests tests/test_gpu_runtime.py -k "not large"
stage service ${T_SERVICE:-90} gpu_tests tests/test_service.py
stage cli ${T_CLI:-60} gpu_tests tests/test_cli.py
stage load ${T_LOAD:-150} python -m t5rt.bench --load --model t5-small --precision bf16 --rates 20,80,200 \
    --duration 5 --drain 20 --calibrate 12 --systems t5rt,t5rt-serial --cache-dir /tmp/t5rt-bench \
    --json "$OUT/load.json" --plot "$OUT/load.png"
stage wheel ${T_WHEEL:-90} bash bench/h100_tables.sh wheel
echo "== total $(( $(date +%s) - t0 ))s"
