#!/usr/bin/env bash
# The native engine's GPU session in one command (tests + workbench), for the lent H100/H200:
#   bash bench/native_gpu_check.sh [STAGES]     STAGES: any of kernels,tests,bench (default all)
# Writes logs under $OUT (or /tmp/native-out). Kernels compile with NVRTC for the local GPU.
set -o pipefail
OUT=${OUT:-/tmp/native-out}; mkdir -p "$OUT"
STAGES=${1:-kernels,tests,bench}
export PYTHONUNBUFFERED=1 T5RT_KERNELS=${T5RT_KERNELS:-nvrtc}
# a fatbin built elsewhere for this GPU (nvcc -fatbin -gencode=arch=compute_90,code=sm_90 of
# every kernels/*.cu) saves the NVRTC compile: FATBIN=path
if [[ -n ${FATBIN:-} && -f $FATBIN ]]; then export T5RT_KERNELS=fatbin T5RT_KERNELS_FATBIN=$FATBIN; fi
export PYTHONPATH=$PWD/src:$PWD:$PWD/_site${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv,noheader | tee "$OUT/device.txt"
t0=$(date +%s)
timeout 300 python3 -c "import time, t5rt.kernels as K; t=time.time(); K.load(); print('kernels', K.source(), f'{time.time()-t:.1f}s')" 2>&1 | tee "$OUT/log"
if [[ $STAGES == *kernels* ]]; then
  timeout ${T_KERNELS:-240} python3 -m pytest -q -x -rs -p no:cacheprovider tests/test_native.py -k "kernels_match" 2>&1 | tee -a "$OUT/log"
fi
if [[ $STAGES == *bench* ]]; then
  (cd bench/kernels && timeout ${T_BENCH:-200} python3 native_step.py --models ${MODELS:-t5-small,t5-base} --precisions ${PRECISIONS:-float32,bfloat16} \
     --batches ${BATCHES:-1,4,32} --json "$OUT/native_step.json") 2>&1 | tee "$OUT/bench.md"
fi
if [[ $STAGES == *tests* ]]; then
  timeout ${T_TESTS:-300} python3 -m pytest -q -rs -s -p no:cacheprovider -m gpu tests/test_native.py ${PYTEST_K:+-k "$PYTEST_K"} 2>&1 | tee -a "$OUT/log"
fi
echo "total $(( $(date +%s) - t0 ))s" | tee -a "$OUT/log"
