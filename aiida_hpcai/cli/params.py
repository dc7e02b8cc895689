"""What every ``aiida-hpcai`` and ``verdi data hpcai.*`` command shares: one-line errors, checked option types
and the options several commands take.

Values are checked by click before anything runs (a count must be positive, an output folder must
exist and be writable), and any error a command raises reaches the user as one line; ``-v debug``
prints the traceback for developers.

The shared options are aiida's :class:`~aiida.cmdline.params.options.overridable.OverridableOption`: a command
writes ``@CODE()``, and where it differs on purpose it says so, e.g. ``@OUTPUT(help=..., type=...)``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pathlib
import traceback

import click
from aiida.cmdline.groups.verdi import VerdiCommand, VerdiCommandGroup
from aiida.cmdline.params import options
from aiida.cmdline.params.options.overridable import OverridableOption
from aiida.cmdline.utils import echo

POSITIVE_INT = click.IntRange(min=1)
NON_NEGATIVE_INT = click.IntRange(min=0)
POSITIVE_FLOAT = click.FloatRange(min=0, min_open=True)
NON_NEGATIVE_FLOAT = click.FloatRange(min=0)
DEFAULT_CODE = 'hpcai-model@localhost'


def one_line(exc: BaseException) -> str:
    """The exception as one line: its message (whitespace folded), with its type where the message needs it."""
    message = ' '.join(str(exc).split())
    if isinstance(exc, (ValueError, RuntimeError, OSError)) and message:
        return message
    return f'{type(exc).__name__}: {message}' if message else type(exc).__name__


@contextlib.contextmanager
def one_line_errors():
    """Any unexpected error inside becomes one line on stderr (exit status 1); with ``-v debug`` its traceback first.

    Click's own errors (usage, bad parameter, exit, abort) pass through: click reports them itself.
    """
    try:
        yield
    except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
        raise
    except Exception as exc:  # noqa: BLE001 - the one place that turns any error into one line
        debug = echo.CMDLINE_LOGGER.isEnabledFor(logging.DEBUG)
        echo.echo_debug(traceback.format_exc())
        hint = '' if debug or isinstance(exc, (ValueError, OSError)) else ' (`-v debug` shows the traceback)'
        echo.echo_critical(f'{one_line(exc)}{hint}')


class HpcaiCommand(VerdiCommand):
    """A command whose unexpected errors end as one line on stderr (exit status 1), the traceback only with -v debug:
    errors of the command itself and those raised while its options are read (an option's callback)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        with one_line_errors():
            return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context):
        with one_line_errors():
            return super().invoke(ctx)


class HpcaiGroup(VerdiCommandGroup):
    """aiida's command group (``-v/--verbosity`` on every command), with :class:`HpcaiCommand` commands."""

    command_class = HpcaiCommand

    @staticmethod
    def add_verbosity_option(cmd: click.Command) -> click.Command:
        # aiida applies the first --verbosity it meets and ignores later ones; on a group (`data`) that first one is
        # always the unset default, which would silence `aiida-hpcai data import ... -v debug`. Commands only.
        # Eager: the level is set before any other option is read, so `-v debug` anywhere on the line also shows
        # the traceback of an error raised while reading an option that stands before it.
        if isinstance(cmd, click.Group) or 'verbosity' in [param.name for param in cmd.params]:
            return cmd
        return options.VERBOSITY(is_eager=True, callback=_set_explicit_log_level)(cmd)


def _set_explicit_log_level(ctx: click.Context, param: click.Parameter, value):
    """aiida's ``--verbosity`` callback, except that a level given on the command wins: `verdi` gives the ``data``
    group an unset ``--verbosity`` whose callback runs first and would otherwise make ``verdi data hpcai.* ... -v
    debug`` ignore the level."""
    from aiida.cmdline.params.options.main import set_log_level
    from aiida.common import log

    if value is not None:
        log.CLI_ACTIVE = None
    return set_log_level(ctx, param, value)


class WritablePath(click.Path):
    """An output path checked before anything runs: its folder exists and can be written.

    With ``folder_ok``, an existing folder is accepted too (the command writes a file into it).
    """

    def __init__(self, folder_ok: bool = False):
        super().__init__(dir_okay=folder_ok, path_type=pathlib.Path)
        self.folder_ok = folder_ok

    def convert(self, value, param, ctx):
        path = super().convert(value, param, ctx)
        if self.folder_ok and path.is_dir():
            folder = path
        else:
            folder = path.parent
            if not folder.is_dir():
                self.fail(f'{path}: the folder {folder} does not exist', param, ctx)
            if path.exists() and not os.access(path, os.W_OK):
                self.fail(f'{path} cannot be written', param, ctx)
        if not os.access(folder, os.W_OK):
            self.fail(f'{path}: the folder {folder} cannot be written', param, ctx)
        return path


class ElementList(click.ParamType):
    """Element symbols separated by commas (``Fe,O``); each must be an element, none named twice, at least one.
    ``none_ok``: the word ``none`` is the empty list."""

    name = 'elements'

    def __init__(self, none_ok: bool = False):
        self.none_ok = none_ok

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        from pymatgen.core.periodic_table import Element

        if self.none_ok and value.strip().lower() == 'none':
            return []
        symbols = [symbol.strip() for symbol in value.split(',') if symbol.strip()]
        if not symbols:
            self.fail('name at least one element, e.g. Fe,O', param, ctx)
        unknown = [symbol for symbol in symbols if not Element.is_valid_symbol(symbol)]
        if unknown:
            self.fail(f'{", ".join(map(repr, unknown))} is not an element symbol (write Fe,O)', param, ctx)
        if len(set(symbols)) != len(symbols):
            self.fail(f'{value!r} names an element twice', param, ctx)
        return symbols


class ProtocolChoice(click.Choice):
    """The protocol names of every registered DFT engine, read when first needed (importing engines is slow)."""

    def __init__(self):
        super().__init__(())

    @property
    def choices(self):
        return _protocol_names()

    @choices.setter
    def choices(self, value):  # click.Choice.__init__ assigns; the names come from the engines instead
        pass


@functools.cache
def _protocol_names() -> tuple[str, ...]:
    from aiida_hpcai.engines import ENGINES, get_engine

    names: list[str] = []
    for engine in ENGINES:
        try:
            names += [name for name in get_engine(engine).protocol_names() if name not in names]
        except ImportError:  # an optional engine plugin that is not installed
            continue
    return tuple(names)


def load_node_of(identifier: str, node_class, param_hint: str):
    """The node with pk or uuid ``identifier``, which must be a ``node_class``; a clear usage error otherwise."""
    from aiida import orm
    from aiida.common import exceptions

    try:
        node = orm.load_node(identifier)
    except exceptions.NotExistent as exc:
        raise click.BadParameter(
            f'no node with pk or uuid {identifier!r} in this profile', param_hint=param_hint
        ) from exc
    except exceptions.MultipleObjectsError as exc:
        raise click.BadParameter(
            f'{identifier!r} is the start of several uuids; give more of it', param_hint=param_hint
        ) from exc
    except ValueError as exc:
        raise click.BadParameter(f'{identifier!r} is neither a pk nor a uuid', param_hint=param_hint) from exc
    if not isinstance(node, node_class):
        raise click.BadParameter(
            f'node {identifier} is a {type(node).__name__}, not a {node_class.__name__}', param_hint=param_hint
        )
    return node


# -- options of the commands that run the hpcai-model program (generate, directive, predict, train) ----------------
CODE = OverridableOption(
    '--code', 'code_label', default=DEFAULT_CODE, show_default=True, help='Code running the hpcai-model program.'
)
DEVICE = OverridableOption('--device', default='cpu', show_default=True, help='cpu, cuda or cuda:<index>.')
JSON = OverridableOption('--json', 'as_json', is_flag=True, help='Print machine-readable JSON instead of a table.')
SUBMIT = OverridableOption(
    '--submit', is_flag=True, help='Submit to the daemon and return at once, instead of running here.'
)
# what a command writes differs: each gives its own help (and folder_ok where a folder is accepted)
OUTPUT = OverridableOption('--output', type=WritablePath(), default=None)
