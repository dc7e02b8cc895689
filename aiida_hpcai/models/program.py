"""``hpcai-model``: the model program that CalcJobs run on any computer (CPU or GPU).

Contract with the CalcJobs (and anybody scripting it by hand)::

    hpcai-model <task> --input DIR --output DIR

``DIR/config.json`` holds the task's parameters; structures arrive as ``DIR/structures.npz``
(:mod:`aiida_hpcai.models.structure_io`), checkpoints as files named in the config. Each task
writes its results into the output folder. A failure the caller should react to is written as
``OUTPUT/error.json`` (``{"error": <code>, "message": ...}``) and the program exits non-zero;
the parsers turn the code into an AiiDA exit code.

The program imports only torch, e3nn, numpy and pymatgen: no AiiDA on compute nodes.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pathlib
import platform
import sys
import traceback

# task name -> "module:function"; a task function takes (config: dict, input_dir, output_dir).
TASKS: dict[str, str] = {
    'info': 'aiida_hpcai.models.program:run_info',
    'train': 'aiida_hpcai.models.training:run_train',
    'predict': 'aiida_hpcai.models.inference:run_predict',
}

ERROR_FILENAME = 'error.json'


class TaskError(Exception):
    """A failure with a machine-readable code, reported in ``error.json``."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def run_info(config: dict, input_dir: pathlib.Path, output_dir: pathlib.Path) -> None:
    """Report the versions and devices this program sees (useful to check a new computer)."""
    import numpy
    import torch

    info = {
        'python': platform.python_version(),
        'torch': torch.__version__,
        'numpy': numpy.__version__,
        'cuda_available': torch.cuda.is_available(),
        'cuda_devices': [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        'tasks': sorted(TASKS),
    }
    (output_dir / 'info.json').write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))


def _load_task(name: str):
    module_name, function_name = TASKS[name].split(':')
    return getattr(importlib.import_module(module_name), function_name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='hpcai-model',
        description='Run an aiida-hpcai model task on an input folder and write an output folder.',
    )
    sub = parser.add_subparsers(dest='task', required=True, metavar='TASK')
    for name in sorted(TASKS):
        task = sub.add_parser(name, help=(_task_doc(name)))
        task.add_argument('--input', '-i', default='.', help='folder with config.json and input files')
        task.add_argument('--output', '-o', default='.', help='folder the results are written to')
    return parser


def _task_doc(name: str) -> str:
    # Resolved lazily: importing every task module just to print --help would load torch.
    return {
        'info': 'print versions and visible devices',
        'train': 'train or fine-tune a Crysformer ensemble (writes model.pt, metrics.json, figures)',
        'predict': 'predict mean and sigma for structures.npz with one or more Crysformer checkpoints',
    }.get(name, f'run the {name} task')


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    input_dir = pathlib.Path(args.input)
    output_dir = pathlib.Path(args.output)
    output_dir.mkdir(parents=True, exist_ok=True)
    config_path = input_dir / 'config.json'
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    try:
        _load_task(args.task)(config, input_dir, output_dir)
    except TaskError as exc:
        _write_error(output_dir, exc.code, str(exc))
        print(f'hpcai-model {args.task}: {exc.code}: {exc}', file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - any crash is reported to the parser, then re-raised
        code = 'out_of_memory' if _is_out_of_memory(exc) else 'unexpected_error'
        _write_error(output_dir, code, ''.join(traceback.format_exception_only(exc)).strip())
        raise
    return 0


def _is_out_of_memory(exc: Exception) -> bool:
    return isinstance(exc, MemoryError) or 'out of memory' in str(exc).lower()


def _write_error(output_dir: pathlib.Path, code: str, message: str) -> None:
    (output_dir / ERROR_FILENAME).write_text(json.dumps({'error': code, 'message': message}))


if __name__ == '__main__':
    # Under `python -m` this file runs as `__main__`, a second copy whose TaskError the tasks do not
    # raise; hand over to the package's own module so error codes are caught.
    sys.exit(importlib.import_module('aiida_hpcai.models.program').main())
