#!/usr/bin/env bash
# The README's main command: install everything, set up the embedded AiiDA profile, run the main job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
aiida-hpcai setup
DATA_DIR=${HPCAI_DATA_DIR:-../shared/data}
aiida-hpcai data import "$DATA_DIR/perov_5/val.csv" --label perov_5-val
aiida-hpcai data import "$DATA_DIR/mp_cgcnn/mp_cgcnn.csv.gz" --limit 2000 --target formation_energy_per_atom --target band_gap --label mp_cgcnn-first-2000

# Surrogate pattern: the shipped Crysformer models predict a held-out batch of the mp_cgcnn test split.
mkdir -p main_job
python3 scripts/main_inputs.py main_job
aiida-hpcai predict main_job/heldout.extxyz --target formation_energy_per_atom
aiida-hpcai predict main_job/heldout.extxyz --target band_gap --threshold 0.5

# DFT: relax + SCF + formation energy of Si with Quantum ESPRESSO (pw.x) through aiida-quantumespresso.
aiida-hpcai dft main_job/Si.cif --engine quantumespresso --protocol fast

# Directive pattern: the shipped EquiCSP generates AlAs cells (CSP), the screening keeps the plausible ones, the
# shipped surrogate ranks them and QE relaxes and evaluates the best one (plots and statistics in main_job/directive).
aiida-hpcai directive --mode csp --composition AlAs -n 8 --steps 200 --top-k 1 --protocol fast --output main_job/directive

# Coordinate pattern: a design request planned into a goal; the loop looks it up (the Si result above is a hit),
# considers the candidate and Si cells the shipped EquiCSP generates, predicts with the shipped model and may start
# at most one small DFT run.
aiida-hpcai design "up to 3 Si structures with a formation energy below 0.5 eV/atom, at most 1 DFT run" \
    --candidates main_job/Si.cif --steps 200 --protocol fast --output main_job/design
