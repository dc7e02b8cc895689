#!/usr/bin/env bash
# The README's test command: install everything, run the test suite, build the docs with warnings as errors.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# style first: a lint or formatting error fails the run before the slow tests
python3 -m ruff check .
python3 -m ruff format --check .
python3 -m pytest -q -rs -p no:cacheprovider "$@"
python3 -m sphinx -W --keep-going -q -b html docs/source docs/build/html
