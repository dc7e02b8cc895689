#!/usr/bin/env bash
# The README's test command: install everything, run the test suite, build the docs with warnings as errors.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# style first: a lint or formatting error fails the run before the slow tests
python3 -m ruff check .
python3 -m ruff format --check .
# PostgreSQL, RabbitMQ, Slurm and SSH for the tests marked `services` (tests/scaleout); stopped again at the end.
# Where they cannot start (no root, no apt) those tests are skipped with the reason; in CI that is a failure.
if bash scripts/services.sh start; then
    trap 'bash scripts/services.sh stop' EXIT
elif ci="${CI:-}" && [[ "${ci,,}" =~ ^(1|true|yes)$ ]]; then
    exit 1
else
    echo 'scripts/services.sh could not start the services: the tests marked `services` will be skipped'
fi
python3 -m pytest -q -rs -p no:cacheprovider "$@"
python3 -m sphinx -W --keep-going -q -b html docs/source docs/build/html
