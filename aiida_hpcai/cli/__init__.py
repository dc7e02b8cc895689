"""The ``aiida-hpcai`` console script (plugins cannot add top-level ``verdi`` commands)."""

import logging
import os
import sys

import click
from aiida.cmdline.params import options, types

from .params import HpcaiGroup


@click.group('aiida-hpcai', cls=HpcaiGroup, context_settings={'help_option_names': ['-h', '--help']})
@options.PROFILE(type=types.ProfileParamType(load_profile=True), expose_value=False)
def cli():
    """aiida-hpcai: couple AI models and DFT for materials discovery, with AiiDA provenance.

    Run `aiida-hpcai setup` once: it creates (or reuses) a profile, the localhost computer,
    the codes and the pseudopotential family every other command uses.
    """


# Sub-commands register themselves on `cli` when imported.
from . import data, design, dft, directive, generate, mcp, plan, results, setup, surrogate  # noqa: E402,F401


def main() -> None:
    """The console script: the command, then an exit without the interpreter's teardown."""
    exit_without_teardown(command_status())


def command_status() -> int:
    """Run the command of ``sys.argv`` as the console script does; its exit status."""
    try:
        cli.main(prog_name='aiida-hpcai')
        return 0
    except SystemExit as exc:  # click ends every standalone call with one
        status = exc.code
    if isinstance(status, int):
        return status
    if status is not None:  # sys.exit('message') prints the message and exits with 1
        print(status, file=sys.stderr)
        return 1
    return 0


def exit_without_teardown(status: int) -> None:
    """Leave with ``status`` without tearing down the ~1,200 modules a command imports.

    That teardown took 0.7-0.9 s of every call on two cores (benchmarks/predict_fixed_cost.py), more than any
    step of a small prediction but the job itself. The profile's storage and broker connection are closed and
    every stream flushed first, as at a normal exit.
    """
    from aiida.manage import get_manager

    get_manager().reset_profile()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that went away (`| head`) or a closed stream
            pass
    os._exit(status)
