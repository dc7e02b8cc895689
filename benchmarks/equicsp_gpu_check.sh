#!/bin/bash
# EquiCSP's GPU checks, sized for one device call of under 10 minutes (the lent machines allow
# 10 minutes a command and 15 minutes of device time a session):
#   1. ab initio generation throughput of the shipped mp20 generator on the GPU, alone on the machine;
#   2. side by side on the one GPU, each for $MINUTES minutes of wall clock: a `cpu`-config generator
#      trained on carbon_24 (CSP mode), a `paper`-config one on perov_5 (CSP mode) and the shipped mp20
#      generator trained on (--init); meanwhile the shipped perov_5 and mp20 generators are measured
#      by benchmarks/equicsp_csp.py on their whole test splits at $STEPS steps;
#   3. the three new generators measured the same way, on the whole test split of their set.
# Results land in $OUT as they are written (a call stopped at its limit still returns them); the
# trained runs and every log come back as runs.tar.gz (the `paper` model.pt is left out: over the
# 16 MiB a returned file may have).
#
#   # here, once: the three sets and pymatgen's and SMACT's wheels for the image's python 3.12
#   # (both folders are listed in .git/info/exclude; KINDS.md lists what the image already holds)
#   mkdir -p .hpcai_device/data/{perov_5,carbon_24,mp_cgcnn}
#   for d in perov_5 carbon_24; do cp ../shared/data/$d/{train_structures_from_jarvis.csv.gz,val.csv,test.csv} .hpcai_device/data/$d/; done
#   cp ../shared/data/mp_cgcnn/mp_cgcnn.csv.gz .hpcai_device/data/mp_cgcnn/
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp -d .whl \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform any \
#     pymatgen==<version here> pymatgen-core==<version here> monty orjson ruamel.yaml ruamel.yaml.clib spglib uncertainties palettable smact wcwidth
#   # device call, with .hpcai_device and .whl carried:
#   bash benchmarks/equicsp_gpu_check.sh
#
# DEVICE=cpu MINUTES=0.3 STEPS=5 LIMIT=16 SAMPLES=16 CONFIG_BIG=tiny runs the same steps on a CPU (to try it
# before a lease).
set -u
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the package from this checkout (not installed there)
export HPCAI_DATA_DIR=${HPCAI_DATA_DIR:-$PWD/.hpcai_device/data}
export HPCAI_CACHE_DIR=${HPCAI_CACHE_DIR:-/tmp/hpcai_cache}
OUT=${OUT:?a folder for the results}
DEVICE=${DEVICE:-cuda}
MINUTES=${MINUTES:-4}
DEADLINE=${DEADLINE:-570}  # seconds after the start by which the runs are packed
SIDE=$(awk "BEGIN { print int($MINUTES * 60) + 60 }")  # limit of each step-2 process: its minutes and a minute more
STEPS=${STEPS:-1000}
SAMPLES=${SAMPLES:-1024}
CONFIG_BIG=${CONFIG_BIG:-paper}
LIMIT=${LIMIT:+--limit $LIMIT}
RUNS=${RUNS:-/tmp/equicsp_gpu}
PRETRAINED=aiida_hpcai/models/pretrained
mkdir -p "$OUT" "$RUNS"
start=$(date +%s)
elapsed() { echo "$(( $(date +%s) - start )) s"; }

if [ -d .whl ] && ! python3 -c "import pymatgen.analysis.structure_matcher, smact.screening" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
if [ "$DEVICE" != cpu ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
fi
python3 -c "import sys, torch, e3nn, pymatgen.core; print('python', sys.version.split()[0], 'torch', torch.__version__, 'e3nn', e3nn.__version__)" | tee -a "$RUNS/versions.txt"

# 0. the three sets parsed once, into the cache that every later step reads
for dataset in perov_5 carbon_24 mp20; do
  python3 -c "from aiida_hpcai.models.evaluation import csp_dataset; csp_dataset('$dataset')" > "$RUNS/parse_$dataset.log" 2>&1 &
done
wait
echo "sets parsed after $(elapsed)"

# 1. generation throughput, alone
timeout 90 python3 benchmarks/equicsp_throughput.py --checkpoint "$PRETRAINED/equicsp_mp20.pt" --device "$DEVICE" \
  --samples "$SAMPLES" --batch-size "$SAMPLES" --steps "$STEPS" --precision float32 bfloat16 \
  --result "$OUT/equicsp_throughput_$DEVICE.json" > "$RUNS/throughput.log" 2>&1
echo "throughput: exit $? after $(elapsed)"

csp() {  # name dataset checkpoint step_lr timeout: one sample per test structure, matched
  timeout "$5" python3 benchmarks/equicsp_csp.py --checkpoint "$3" --dataset "$2" --steps "$STEPS" --step-lr "$4" \
    --batch-size 4096 --device "$DEVICE" --threads 2 $LIMIT --result "$OUT/equicsp_csp_$1.json" > "$RUNS/csp_$1.log" 2>&1
  echo "csp $1: exit $? after $(elapsed)" | tee -a "$RUNS/csp_$1.log"
}
train() {  # name dataset modes config batch_size [--init PATH]
  local name=$1 dataset=$2 modes=$3 config=$4 batch=$5
  shift 5
  timeout "$SIDE" python3 -m aiida_hpcai.models.release train-equicsp \
    --dataset "$dataset" --modes "$modes" --config "$config" --batch-size "$batch" --max-minutes "$MINUTES" \
    --device "$DEVICE" --threads 2 --no-progress --out "$RUNS/$name" "$@" > "$RUNS/$name.log" 2>&1
  echo "$name: exit $? after $(elapsed)" | tee -a "$RUNS/$name.log"
}

# 2. three trainings and the shipped generators' figures, side by side
if [ "$DEVICE" != cpu ]; then  # GPU use every 10 s
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 10 > "$RUNS/gpu_utilization.csv" &
  SAMPLER=$!
fi
train equicsp_carbon_24 carbon_24 csp cpu 256 &
train "equicsp_perov_5_$CONFIG_BIG" perov_5 csp "$CONFIG_BIG" 256 &
train equicsp_mp20_on mp20 both cpu 256 --init "$PRETRAINED/equicsp_mp20.pt" &
csp perov_5_shipped perov_5 "$PRETRAINED/equicsp_perov_5.pt" 5e-7 "$SIDE" &
csp mp20_shipped mp20 "$PRETRAINED/equicsp_mp20.pt" 1e-5 "$SIDE" &
wait $(jobs -p | grep -v "^${SAMPLER:-none}$")

# 3. the new generators, in the time left
LEFT=$(( DEADLINE - $(date +%s) + start ))
[ "$LEFT" -lt 30 ] && LEFT=30
csp carbon_24 carbon_24 "$RUNS/equicsp_carbon_24/model.pt" 5e-6 "$LEFT" &
csp "perov_5_$CONFIG_BIG" perov_5 "$RUNS/equicsp_perov_5_$CONFIG_BIG/model.pt" 5e-7 "$LEFT" &
csp mp20_on mp20 "$RUNS/equicsp_mp20_on/model.pt" 1e-5 "$LEFT" &
wait $(jobs -p | grep -v "^${SAMPLER:-none}$")
[ -n "${SAMPLER:-}" ] && kill "$SAMPLER"
tar czf "$OUT/runs.tar.gz" --exclude training_state.pt --exclude "equicsp_perov_5_$CONFIG_BIG/model.pt" \
  -C "$(dirname "$RUNS")" "$(basename "$RUNS")"
echo "done after $(elapsed)"
ls -la "$OUT"
