#!/usr/bin/env bash
# This session's GPU check in one command (under the 10-minute limit), stage by stage, each with its
# own time limit so that one hang costs only its stage: every new GPU path's tests, the native
# engine's step timings, a short in-flight load run, and a wheel's NVRTC build.
#   here:  cmake -S . -B build/kernels -DT5RT_CUDA_ARCHS=90 && cmake --build build/kernels
#          ../shared/gpu/stage.sh ort   (send parts 1..4, then the last with this script)
#   there: bash .gpu/p5/put.sh && bash .gpu/p5/install.sh && bash bench/gpu_session.sh [STAGES]
#          (carrying .gpu/p5 and build/kernels)
# STAGES (default, in this order): kernels native nbench decoding runtime service cli diag bench load
# wheel; `profile` (bench/diag/scheduler_profile.py) and `soak` by name. LOAD_ARGS (e.g.
# --inflight-kernels) and PROFILE_ARGS (default --set inflight_kernels=1) pass runtime switches. Their limits add up to more than one call: split them over two calls,
# e.g. "native nbench diag service" then "bench load soak" (each call stages ORT again if the
# machine went back). A 10-minute soak spans two commands: "soakbg" then "soakwait"; SOAK_ARGS pass
# soak.py's switches, e.g. "--set share_pools=0" or "--check-every 40".
set -o pipefail
export PYTHONPATH=/tmp/site${EXTRA_SITE:+:$EXTRA_SITE} PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
# every log and table under $LOGS, packed into $OUT/logs.tgz at the end (the device tool brings
# back at most 8 files)
LOGS=${LOGS:-/tmp/gpu-logs}; rm -rf "$LOGS"; mkdir -p "$LOGS"
trap 'tar czf "$OUT/logs.tgz" -C "$LOGS" .' EXIT  # also when a stage is killed
t0=$(date +%s)
STAGES=${1:-kernels native nbench decoding runtime service cli diag bench load wheel}   # soak: by name
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader | tee "$LOGS/device.txt"
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
  timeout -k 5 "$lim" "$@" > "$LOGS/$name.log" 2>&1; local rc=$?
  grep -v "plugin EP device" "$LOGS/$name.log" | tail -${TAIL:-15}; echo "== $name rc=$rc at $(( $(date +%s) - t0 ))s"
}
GT="python -m pytest -q -rs -p no:cacheprovider -o addopts= -m gpu --durations=8"
stage kernels ${T_KERNELS:-240} $GT tests/test_kernels.py  # NVRTC compiles every kernel first: ~170 s (H100, 2026-12-08)
stage native ${T_NATIVE:-150} $GT tests/test_native.py -k "not large"
stage nbench ${T_NBENCH:-120} bash -c "cd bench/kernels && python native_step.py --models ${MODELS:-t5-small,t5-base} \
    --precisions ${PRECISIONS:-float32,bfloat16} --batches ${BATCHES:-1,32} --json $LOGS/native_step.json"
stage decoding ${T_DECODING:-90} $GT tests/test_decoding_gpu.py
stage runtime ${T_RUNTIME:-120} $GT tests/test_gpu_runtime.py -k "not large"
stage service ${T_SERVICE:-90} $GT tests/test_service.py
stage cli ${T_CLI:-60} $GT tests/test_cli.py
stage diag ${T_DIAG:-120} python bench/diag/service_gpu.py
stage bench ${T_BENCH:-150} python -m t5rt.bench --model t5-small --precision bf16 --batch-sizes 1,32 --beams 1,4 \
    --peers ${PEERS:-hf} --runs 5 --cache-dir /tmp/t5rt-bench --json "$LOGS/bench.json"
stage profile ${T_PROFILE:-150} python bench/diag/scheduler_profile.py --rates ${PROFILE_RATES:-50,100,200,400} \
    --backend ${LOAD_BACKEND:-auto} ${PROFILE_ARGS:---set inflight_kernels=1}
stage load ${T_LOAD:-150} python -m t5rt.bench --load --model t5-small --precision bf16 --rates ${RATES:-25,50,100,200,400} \
    --duration ${LOAD_S:-5} --drain 20 --calibrate ${CALIBRATE:-24} --systems ${LOAD_SYSTEMS:-t5rt,t5rt-serial} --cache-dir /tmp/t5rt-bench \
    --backend ${LOAD_BACKEND:-auto} ${LOAD_ARGS:-} --json "$LOGS/load.json" --plot "$OUT/load.png"
SOAK=(python bench/soak.py --model t5-small --precision bf16 --device cuda --backend ${LOAD_BACKEND:-auto}
      --cache-dir /tmp/t5rt-bench ${SOAK_ARGS:-})
stage soak ${T_SOAK:-300} "${SOAK[@]}" --saturation ${SATURATION:-93} --minutes ${SOAK_MIN:-4} --json "$LOGS/soak.json"
# A soak longer than one device command: `soakbg` starts it detached (it outlives the command while
# the machine stays warm), `soakwait` in the next command waits for it and brings its log and JSON.
SOAKBG=/tmp/soak-bg
if [[ " $STAGES " == *" soakbg "* ]]; then
  rm -rf "$SOAKBG"; mkdir -p "$SOAKBG"
  # saturation: SATURATION, else the best t5rt throughput of this command's load stage, else 93
  sat=${SATURATION:-$(python -c "import json; print(round(max(r['throughput_rps'] for r in json.load(open('${LOAD_JSON:-$LOGS/load.json}'))['rows'] if r['system'] == 't5rt'), 1))" 2>/dev/null)}
  setsid nohup "${SOAK[@]}" --saturation ${sat:-93} --minutes ${SOAK_MIN:-10} --json "$SOAKBG/soak.json" \
      > "$SOAKBG/soak.log" 2>&1 < /dev/null & echo $! > "$SOAKBG/pid"; disown
  echo "== soakbg: started pid $(cat $SOAKBG/pid) for ${SOAK_MIN:-10} min at ${sat:-93} req/s saturation ${SOAK_ARGS:-}"
fi
if [[ " $STAGES " == *" soakwait "* ]]; then
  pid=$(cat "$SOAKBG/pid" 2>/dev/null)
  if [ -z "$pid" ]; then echo "== soakwait: no soak was started on this machine"
  else
    while kill -0 "$pid" 2>/dev/null && (( $(left) > 20 )); do sleep 5; done
    kill -0 "$pid" 2>/dev/null && echo "== soakwait: still running at $(( $(date +%s) - t0 ))s" || echo "== soakwait: finished"
    cp "$SOAKBG"/* "$LOGS"/ 2>/dev/null; grep -v "plugin EP device" "$SOAKBG/soak.log" | tail -${TAIL:-30}
  fi
fi
stage wheel ${T_WHEEL:-90} env OUT="$LOGS" bash bench/h100_tables.sh wheel
echo "== total $(( $(date +%s) - t0 ))s"
