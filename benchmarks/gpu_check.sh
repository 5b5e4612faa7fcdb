#!/usr/bin/env bash
# The GPU check: the CUDA tests, the speed benchmark on the GPU, the default job on the GPU
# and the whole test suite with CUDA present. Run from the repository root on a machine with
# an NVIDIA GPU and torch installed (the peers, if wanted, installed too):
#
#     OUT=/tmp/gpu_check bash benchmarks/gpu_check.sh
#
# Each step has its own time limit and writes its log to $OUT; a failing step does not stop
# the later ones. Figures from a run are in benchmarks/README.md ("GPU").
set -u
OUT=${OUT:-/tmp/gpu_check}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MPLBACKEND=Agg

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.log, say how long
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    echo "== $name"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    echo "== $name: exit $? after $((SECONDS - start)) s"
    tail -n 25 "$OUT/$name.log"
}

{ nvidia-smi -L; nproc; git rev-parse --short HEAD 2>/dev/null
  "$PY" -c "import sys, torch; print(sys.version.split()[0], torch.__version__,
torch.cuda.get_device_name())"; } >"$OUT/machine.log" 2>&1
cat "$OUT/machine.log"

step test_cuda 120 "$PY" -m pytest tests/test_cuda.py -q -p no:cacheprovider
step speed_cuda 150 "$PY" benchmarks/speed.py --device cuda --quick --no-scaling \
    --json "$OUT/speed_cuda.json"
rm -rf /tmp/gpu_check_run
step train_cuda 120 bash -c "time $PY -m realnvp train --device cuda --quiet \
    --out /tmp/gpu_check_run && cp /tmp/gpu_check_run/metrics.json $OUT/train_metrics.json"
step suite 150 "$PY" -m pytest -q -x -n 8 -p no:cacheprovider
step profile_eager 90 "$PY" benchmarks/profile_inference.py --device cuda
step profile_scripted 90 "$PY" -c "import runpy, sys
import realnvp.bijections._kernels as k
k.SCRIPTED_ON_ACCELERATORS = True
sys.argv = ['profile_inference.py', '--device', 'cuda']
runpy.run_path('benchmarks/profile_inference.py', run_name='__main__')"
step speed_cuda_big 120 "$PY" benchmarks/speed.py --device cuda --quick --no-scaling \
    --rounds 3 --eval-batch 1048576 --json "$OUT/speed_cuda_big.json"
