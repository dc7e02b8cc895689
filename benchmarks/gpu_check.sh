#!/bin/bash
# The surrogate benchmarks' GPU checks, sized for one device call of about 10 minutes
# (the lent machines allow 10 minutes a command and 15 minutes of device time a session):
#   1. throughput of `hpcai-model predict` with the shipped formation-energy ensemble on the GPU
#      (the same 1,000 structures and cases as the CPU figure; graphs built on 2 CPU threads);
#   2. one `paper` member (formation energy) trained for $MINUTES minutes: epochs, step time and
#      validation/test MAE reached in that budget.
# Everything lands in $OUT as it is written, so a call stopped at its limit still returns it.
#
#   python benchmarks/surrogate_accuracy.py export-npz .hpcai_device/mp_cgcnn_filtered.npz   # here, once
#   # device call, with .hpcai_device carried:
#   DATA=.hpcai_device/mp_cgcnn_filtered.npz bash benchmarks/gpu_check.sh
#
# DEVICE=cpu CONFIG=tiny MINUTES=0.2 COUNT=50 runs the same steps on a CPU (to try the script before a lease).
set -u
export PYTHONUNBUFFERED=1
DATA=${DATA:?the filtered dataset npz written by surrogate_accuracy.py export-npz}
OUT=${OUT:?a folder for the results}
DEVICE=${DEVICE:-cuda}
MINUTES=${MINUTES:-5}
CONFIG=${CONFIG:-paper}
COUNT=${COUNT:-1000}
RUNS=${RUNS:-/tmp/gpu_check}
mkdir -p "$OUT" "$RUNS"
start=$(date +%s)
elapsed() { echo "$(( $(date +%s) - start )) s"; }

if [ "$DEVICE" != cpu ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
fi
python3 -c "import torch, e3nn; print('torch', torch.__version__, 'e3nn', e3nn.__version__)" | tee -a "$OUT/gpu.txt"

timeout 240 python3 benchmarks/surrogate_throughput.py --data "$DATA" --device "$DEVICE" --count "$COUNT" \
  --output "$OUT/surrogate_throughput_$DEVICE.json" > "$OUT/throughput.log" 2>&1
echo "throughput: exit $? after $(elapsed)"
grep -E '"case"|structures_per_second_(wall|in_program)"' "$OUT/surrogate_throughput_$DEVICE.json"

timeout "$(awk "BEGIN { print int($MINUTES * 60) + 180 }")" python3 benchmarks/surrogate_accuracy.py train --data "$DATA" \
  --target formation_energy_per_atom --config "$CONFIG" --member 0 --device "$DEVICE" --batch-size 64 \
  --max-minutes "$MINUTES" --mc-samples 2 --threads 4 --graph-workers 8 --no-progress \
  --out "$RUNS/${CONFIG}_fe" > "$OUT/${CONFIG}_fe.log" 2>&1
echo "$CONFIG member: exit $? after $(elapsed)"
cp "$RUNS/${CONFIG}_fe/metrics.json" "$OUT/${CONFIG}_fe_metrics.json" 2>/dev/null
cp "$RUNS/${CONFIG}_fe/learning_curve.png" "$OUT/${CONFIG}_fe_learning_curve.png" 2>/dev/null
tail -n 5 "$OUT/${CONFIG}_fe.log"
