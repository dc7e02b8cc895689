#!/usr/bin/env bash
# The README's test command: install everything, run the test suite, build the docs with warnings as errors.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
python3 -m pytest -q -p no:cacheprovider "$@"
python3 -m sphinx -W --keep-going -q -b html docs/source docs/build/html
