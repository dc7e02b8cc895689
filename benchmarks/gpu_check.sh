#!/bin/bash
# The surrogate benchmarks' GPU checks, sized for one device call of under 10 minutes
# (the lent machines allow 10 minutes a command and 15 minutes of device time a session):
#   1. throughput of `hpcai-model predict` with the shipped formation-energy ensemble on the GPU
#      (the same 1,000 structures and cases as the CPU figure; graphs built on 2 CPU threads), alone
#      on the machine;
#   2. then, side by side on the one GPU, $CPU_MEMBERS formation-energy members of the `cpu` config
#      (the shipped recipe: batch 64, learning rate 1e-3, seeds $SEED, $SEED+1, ...) and one member
#      of $CONFIG (default `paper`), each trained for $MINUTES minutes of wall clock.
# Results land in $OUT as they are written (a call stopped at its limit still returns them); the
# trained runs come back as one runs.tar.gz (model.pt, metrics.json, plots, logs; keep it under the 16 MiB a
# returned file may have: a `paper` member is 13 MB) and are summarised in surrogate_gpu_training.json/.png.
#
#   python -m aiida_hpcai.models.release export-npz .hpcai_device/mp_cgcnn_filtered.npz   # here, once
#   # the machine's image lacks pymatgen (the graphs use its compiled neighbour search): its wheel
#   # for the image's python 3.12, here, once (both folders listed in .git/info/exclude):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 -d .whl pymatgen-core==<the version installed here>
#   # device call, with .hpcai_device and .whl carried:
#   DATA=.hpcai_device/mp_cgcnn_filtered.npz bash benchmarks/gpu_check.sh
#
# DEVICE=cpu CONFIG=tiny MINUTES=0.2 COUNT=50 CPU_MEMBERS=0 runs the same steps on a CPU (to try it before a lease).
set -u
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the package from this checkout (not installed there)
DATA=${DATA:?the filtered dataset npz written by python -m aiida_hpcai.models.release export-npz}
OUT=${OUT:?a folder for the results}
DEVICE=${DEVICE:-cuda}
MINUTES=${MINUTES:-5}
CONFIG=${CONFIG:-paper}
CPU_MEMBERS=${CPU_MEMBERS:-3}
SEED=${SEED:-10}
COUNT=${COUNT:-1000}
RUNS=${RUNS:-/tmp/gpu_check}
mkdir -p "$OUT" "$RUNS"
start=$(date +%s)
elapsed() { echo "$(( $(date +%s) - start )) s"; }

if [ -d .whl ] && ! python3 -c "import pymatgen.optimization.neighbors" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
if [ "$DEVICE" != cpu ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
fi
python3 -c "import sys, torch, e3nn; print('python', sys.version.split()[0], 'torch', torch.__version__, 'e3nn', e3nn.__version__)" | tee -a "$OUT/gpu.txt"

timeout 150 python3 benchmarks/surrogate_throughput.py --data "$DATA" --device "$DEVICE" --count "$COUNT" \
  --output "$OUT/surrogate_throughput_$DEVICE.json" > "$OUT/throughput.log" 2>&1
echo "throughput: exit $? after $(elapsed)"
grep -E '"case"|structures_per_second_(wall|in_program)"' "$OUT/surrogate_throughput_$DEVICE.json"

if [ "$DEVICE" != cpu ]; then  # GPU use while the members train, every 10 s
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 10 > "$RUNS/gpu_utilization.csv" &
  SAMPLER=$!
fi
train_member() {  # name config member
  timeout "$(awk "BEGIN { print int($MINUTES * 60) + 150 }")" python3 -m aiida_hpcai.models.release train \
    --data "$DATA" --target formation_energy_per_atom --config "$2" --member "$3" --seed "$SEED" --device "$DEVICE" \
    --batch-size 64 --learning-rate 1e-3 --max-minutes "$MINUTES" --mc-samples 2 --threads 2 --graph-workers 4 \
    --no-progress --out "$RUNS/$1" > "$RUNS/$1.log" 2>&1
  echo "$1: exit $? after $(elapsed)" | tee -a "$RUNS/$1.log"
}
for member in $(seq 0 $((CPU_MEMBERS - 1))); do
  train_member "cpu_fe_m$member" cpu "$member" &
done
train_member "${CONFIG}_fe" "$CONFIG" 0 &
wait $(jobs -p | grep -v "^${SAMPLER:-none}$")
[ -n "${SAMPLER:-}" ] && kill "$SAMPLER"
tail -n 2 "$RUNS"/*.log
runs=()
for folder in "$RUNS"/*/; do [ -f "$folder/metrics.json" ] && runs+=(--run "$(basename "$folder")=$folder"); done
[ ${#runs[@]} -gt 0 ] && python3 benchmarks/surrogate_training_runs.py "${runs[@]}" --data "$DATA" --device "$DEVICE" --result "$OUT/surrogate_gpu_training.json" \
  --note "benchmarks/gpu_check.sh on $(head -n 2 "$OUT/gpu.txt" | tail -n 1): $CPU_MEMBERS cpu-config members and one $CONFIG member side by side, $MINUTES min each, $(date -u '+%Y-%m-%d %H:%M UTC')"
tar czf "$OUT/runs.tar.gz" --exclude training_state.pt -C "$(dirname "$RUNS")" "$(basename "$RUNS")"
