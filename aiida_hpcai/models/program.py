"""``hpcai-model``: the model program that CalcJobs run on any computer (CPU or GPU).

Contract with the CalcJobs (and anybody scripting it by hand)::

    hpcai-model <task> --input DIR --output DIR

``DIR/config.json`` holds the task's parameters; structures arrive as ``DIR/structures.npz``
(:mod:`aiida_hpcai.models.structure_io`), checkpoints as files named in the config. Each task
writes its results into the output folder. A failure the caller should react to is written as
``OUTPUT/error.json`` (``{"error": <code>, "message": ...}``) and the program exits non-zero;
the parsers turn the code into an AiiDA exit code. The file names and error codes are those of
:mod:`aiida_hpcai.models.contract`.

Tasks are :data:`TASKS`: ``info`` runs on its own; ``train`` and ``predict`` run the entry point of
the architecture that ``config.json`` names, else the one its checkpoints name, else ``crysformer``
(:mod:`aiida_hpcai.models.registry`). A task every architecture may implement is one line in TASKS.

The program imports only torch, e3nn, numpy and pymatgen: no AiiDA on compute nodes.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import pathlib
import platform
import sys
import traceback

from . import registry
from .contract import (
    ARCHITECTURE_KEY,
    CONFIG_FILE,
    DEFAULT_ARCHITECTURE,
    ERROR_FILE,
    EXIT_OUT_OF_MEMORY,
    EXIT_TASK_ERROR,
    INCOMPATIBLE_MODELS,
    INFO_FILE,
    INVALID_CONFIG,
    OUT_OF_MEMORY,
    UNEXPECTED_ERROR,
    TaskError,
    checkpoint_entries,
)


@dataclasses.dataclass(frozen=True)
class Task:
    """One ``hpcai-model`` task. ``function`` (``'module:function'``) runs it; without one, the task is
    the entry point of that name of the architecture the config or its checkpoints name."""

    help: str
    function: str | None = None


# A task function takes (config: dict, input_dir: pathlib.Path, output_dir: pathlib.Path).
TASKS: dict[str, Task] = {
    'info': Task('print versions, visible devices and registered architectures', 'aiida_hpcai.models.program:run_info'),
    'train': Task('train or fine-tune a model of the architecture config.json names (default crysformer)'),
    'predict': Task('predict mean and sigma for structures.npz with the checkpoints config.json names'),
    'generate': Task('sample crystal structures with the generative checkpoint config.json names (equicsp)'),
}


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
        'architectures': {name: sorted(entry.tasks) for name, entry in sorted(registry.architectures().items())},
    }
    (output_dir / INFO_FILE).write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))


def architecture_of(config: dict, input_dir: pathlib.Path) -> str:
    """The architecture a task runs: the config's ``architecture``, else its checkpoints', else the default.
    The checkpoints are loaded to read it (checked against their sha256 and the registry), once: the task's
    ``load_verified`` gets the same copy."""
    from .checkpoint import peek_architecture

    named = config.get(ARCHITECTURE_KEY)
    found = {peek_architecture(entry, input_dir) for entry in checkpoint_entries(config)}
    if len(found) > 1:
        raise TaskError(INCOMPATIBLE_MODELS, f'the checkpoints are of different architectures: {sorted(found)}')
    if named is not None and found and found != {named}:
        raise TaskError(
            INCOMPATIBLE_MODELS, f'config.json names architecture {named!r}, its checkpoints {found.pop()!r}'
        )
    return named or (found.pop() if found else DEFAULT_ARCHITECTURE)


def task_function(name: str, config: dict, input_dir: pathlib.Path):
    """The function that runs task ``name`` for this config."""
    task = TASKS[name]
    if task.function is not None:
        module_name, function_name = task.function.split(':')
        return getattr(importlib.import_module(module_name), function_name)
    try:
        return registry.get(architecture_of(config, input_dir)).task(name)
    except registry.UnknownArchitecture as exc:
        raise TaskError(INVALID_CONFIG, str(exc)) from exc


def import_e3nn_without_compiler() -> None:
    """Import e3nn without torch's compiler stack, for a program that never compiles a model.

    e3nn marks one function with ``torch.compiler.disable`` as it is imported, and that imports
    ``torch._dynamo``: about 1.1 s of CPU, a fifth of the program's start-up before it predicts anything
    (``python -X importtime``; benchmarks/predict_fixed_cost.py). The mark only matters under
    ``torch.compile``, which this program does not use, so it is left off here; the numbers are the same
    to the bit. Any other process (a user's script, the tests) imports e3nn as it is.
    """
    if 'e3nn' in sys.modules:
        return
    import torch

    disable = torch.compiler.disable
    torch.compiler.disable = lambda fn=None, recursive=True, **kwargs: (lambda f: f) if fn is None else fn
    try:
        import e3nn.o3  # noqa: F401
    finally:
        torch.compiler.disable = disable


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='hpcai-model',
        description='Run an aiida-hpcai model task on an input folder and write an output folder.',
    )
    sub = parser.add_subparsers(dest='task', required=True, metavar='TASK')
    for name in sorted(TASKS):
        task = sub.add_parser(name, help=TASKS[name].help)
        task.add_argument('--input', '-i', default='.', help='folder with config.json and input files')
        task.add_argument('--output', '-o', default='.', help='folder the results are written to')
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    input_dir = pathlib.Path(args.input)
    output_dir = pathlib.Path(args.output)
    output_dir.mkdir(parents=True, exist_ok=True)
    config_path = input_dir / CONFIG_FILE
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    if TASKS[args.task].function is None:  # an architecture's task: its models are built with e3nn
        import_e3nn_without_compiler()
    try:
        task_function(args.task, config, input_dir)(config, input_dir, output_dir)
    except TaskError as exc:
        _write_error(output_dir, exc.code, str(exc))
        print(f'hpcai-model {args.task}: {exc.code}: {exc}', file=sys.stderr)
        return EXIT_TASK_ERROR
    except Exception as exc:  # noqa: BLE001 - any crash is reported to the parser
        message = ''.join(traceback.format_exception_only(exc)).strip()
        if _is_out_of_memory(exc):
            # Expected on a big batch: one line, no traceback, its own exit status; the caller retries smaller.
            _write_error(output_dir, OUT_OF_MEMORY, message)
            print(f'hpcai-model {args.task}: {OUT_OF_MEMORY}: {message}', file=sys.stderr)
            return EXIT_OUT_OF_MEMORY
        _write_error(output_dir, UNEXPECTED_ERROR, message)
        raise  # the traceback, for a bug report
    return 0


# What an allocation failure says: torch on a CPU ("DefaultCPUAllocator: can't allocate memory: you tried to
# allocate ... bytes. Error code 12 (Cannot allocate memory)"), CUDA ("CUDA out of memory"), numpy, the kernel.
_OUT_OF_MEMORY_MESSAGES = ('out of memory', "can't allocate memory", 'cannot allocate memory', 'unable to allocate')


def _is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says that the task ran out of host or device memory."""
    torch = sys.modules.get('torch')  # imported by every task that could run out of memory
    oom_type = getattr(torch, 'OutOfMemoryError', None) if torch is not None else None
    if isinstance(exc, MemoryError) or (oom_type is not None and isinstance(exc, oom_type)):
        return True
    return isinstance(exc, RuntimeError) and any(text in str(exc).lower() for text in _OUT_OF_MEMORY_MESSAGES)


def _write_error(output_dir: pathlib.Path, code: str, message: str) -> None:
    (output_dir / ERROR_FILE).write_text(json.dumps({'error': code, 'message': message}))


def run() -> None:
    """The console script: :func:`main`, then :func:`exit_without_teardown`. A crash still raises with its
    traceback."""
    exit_without_teardown(main())


def exit_without_teardown(status: int) -> None:
    """Leave with ``status`` without the interpreter's teardown of torch and e3nn.

    That teardown took about 0.65 s on two cores, a third of a small prediction job's start-up and exit
    (benchmarks/predict_fixed_cost.py). Every output file is written and closed when a task returns.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed stream
            pass
    os._exit(status)


if __name__ == '__main__':
    run()
