"""The ``aiida-hpcai`` console script (plugins cannot add top-level ``verdi`` commands)."""

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
