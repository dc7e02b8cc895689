"""``aiida-hpcai dft``: relax, static SCF and formation energy of one structure with ``hpcai.dft``."""

from __future__ import annotations

import pathlib

import click
from aiida.cmdline.utils import decorators, echo

from ..engines import ENGINES
from . import cli
from .params import POSITIVE_INT, OverridableOption, ProtocolChoice
from .surrogate import _submit

DEFAULT_CODES = {'quantumespresso': 'pw@localhost', 'vasp': 'vasp@localhost'}


def _parse_overrides(ctx, param, value):
    """``--overrides`` takes YAML or JSON text, or the path of a YAML/JSON file."""
    import yaml

    if value is None:
        return None
    path = pathlib.Path(value)
    text = path.read_text(encoding='utf-8') if path.is_file() else value
    try:
        overrides = yaml.safe_load(text)
    except yaml.YAMLError as exception:
        raise click.BadParameter(f'not YAML/JSON: {exception}') from exception
    if not isinstance(overrides, dict):
        raise click.BadParameter('must be a mapping, e.g. "{kpoints_distance: 0.25}"')
    return overrides


def overrides_argument(text: str) -> dict:
    """:func:`_parse_overrides` as an argparse ``type``, for the tools that take overrides outside click
    (``python -m aiida_hpcai.engines.fit_gga_u --overrides``, ``benchmarks/coordinate_requests.py``)."""
    import argparse

    try:
        return _parse_overrides(None, None, text)
    except click.BadParameter as exception:
        raise argparse.ArgumentTypeError(exception.message) from exception


# -- the DFT options of the commands that run hpcai.dft_batch (directive, design) -----------------------------------
ENGINE = OverridableOption('--engine', type=click.Choice(sorted(ENGINES)), default='quantumespresso', show_default=True)
DFT_PROTOCOL = OverridableOption(
    '--protocol', type=ProtocolChoice(), default=None, help="DFT protocol; default: the engine's default."
)
DFT_CODE = OverridableOption(
    '--dft-code', 'dft_code_label', default=None, help='DFT code; default pw@localhost or vasp@localhost.'
)
DFT_OVERRIDES = OverridableOption(
    '--dft-overrides',
    callback=_parse_overrides,
    default=None,
    help='Overrides of the DFT protocol as YAML/JSON text or file, as `aiida-hpcai dft --overrides`, e.g. '
    '"{kpoints_distance: 0.5, scf: {kpoints_distance: 0.3}}" (relax on a coarser mesh than the static SCF).',
)
MAX_CONCURRENT = OverridableOption(
    '--max-concurrent', type=POSITIVE_INT, default=None, help='DFT calculations at once (4).'
)


@cli.command('dft')
@click.argument('file', type=click.Path(exists=True, dir_okay=False, path_type=pathlib.Path))
@ENGINE()
@click.option(
    '--protocol', type=ProtocolChoice(), default=None, help="Protocol; default: the engine's default protocol."
)
@click.option('--code', 'code_label', default=None, help='Code label; default pw@localhost (QE) or vasp@localhost.')
@click.option(
    '--overrides',
    callback=_parse_overrides,
    default=None,
    help='Protocol overrides as YAML/JSON text or file, e.g. "{kpoints_distance: 0.25}". Unknown keys are an error.',
)
@click.option(
    '--num-mpiprocs', type=POSITIVE_INT, default=None, help="MPI processes per calculation (default: the computer's)."
)
@click.option('--max-wallclock-seconds', type=POSITIVE_INT, default=None, help='Wall-time limit of each calculation.')
@click.option('--no-formation-energy', is_flag=True, help='Skip the elemental references and the formation energy.')
@click.option(
    '--energy-correction',
    type=click.Choice(['mp2020', 'none']),
    default='mp2020',
    show_default=True,
    help="Corrections added to the formation energy: the Materials Project's (anion and, for runs with MP's U "
    "values, GGA/GGA+U; the surrogate's scale) or none.",
)
@click.option('--no-standardize', is_flag=True, help='Keep the cell as given instead of its standard primitive cell.')
@click.option('--no-relax', is_flag=True, help='No relaxation: the single-point energy of the structure as given.')
@click.option('--submit', is_flag=True, help='Submit to the daemon and return at once, instead of running here.')
@decorators.with_dbenv()
def dft(
    file,
    engine,
    protocol,
    code_label,
    overrides,
    num_mpiprocs,
    max_wallclock_seconds,
    no_formation_energy,
    energy_correction,
    no_standardize,
    no_relax,
    submit,
):
    """Relax FILE (CIF, POSCAR, anything pymatgen reads), run a static SCF and compute its formation energy.

    Prints the results and the pk of the hpcai.dft WorkChain. The first run per engine and protocol also
    computes the elemental references it needs; later runs find them in the profile.
    """
    from aiida import orm
    from aiida.engine import run_get_node

    from aiida_hpcai.workchains.dft import DftWorkChain

    protocol = resolve_protocol(engine, protocol, overrides)
    structure = _read_one_structure(file)
    code = load_dft_code(engine, code_label, '--code')

    options = {'resources': {'num_machines': 1}}
    if num_mpiprocs:
        options['resources']['num_mpiprocs_per_machine'] = num_mpiprocs
    if max_wallclock_seconds:
        options['max_wallclock_seconds'] = max_wallclock_seconds
    inputs = {
        'structure': orm.StructureData(pymatgen=structure),
        'engine': orm.Str(engine),
        'code': code,
        'protocol': orm.Str(protocol),
        'options': orm.Dict(options),
        'compute_formation_energy': orm.Bool(not no_formation_energy),
        'energy_correction': orm.Str(energy_correction),
        'standardize': orm.Bool(not no_standardize),
        'relax': orm.Bool(not no_relax),
        'metadata': {'label': f'{structure.composition.reduced_formula} {file.name}'},
    }
    if overrides:
        inputs['overrides'] = orm.Dict(overrides)

    if submit:
        _submit(DftWorkChain, inputs, 'hpcai.dft')
        return

    _, node = run_get_node(DftWorkChain, **inputs)
    _print_results(node, structure)


def resolve_protocol(
    engine: str, protocol: str | None, overrides: dict | None = None, overrides_hint: str = '--overrides'
) -> str:
    """The engine's protocol (its default when None), checked with the overrides (the option ``overrides_hint``); a
    usage error otherwise."""
    from aiida_hpcai.engines import get_engine

    adapter = get_engine(engine)
    if protocol is not None and protocol not in adapter.protocol_names():
        raise click.BadParameter(
            f'{engine} has no protocol {protocol!r}; choose from {", ".join(adapter.protocol_names())}',
            param_hint='--protocol',
        )
    protocol = protocol or adapter.default_protocol()
    try:
        adapter.load_protocol(protocol, overrides)
    except (ValueError, ImportError) as exception:
        raise click.BadParameter(str(exception), param_hint=overrides_hint) from exception
    return protocol


def dft_batch_inputs(
    engine: str, protocol: str | None, overrides: dict | None, code_label: str | None, max_concurrent: int | None
) -> dict:
    """The ``hpcai.dft_batch`` inputs of a command's DFT options (``--engine``, ``--protocol``, ``--dft-overrides``,
    ``--dft-code``, ``--max-concurrent``); a usage error on a bad protocol, override or code, before anything runs."""
    from aiida import orm

    protocol = resolve_protocol(engine, protocol, overrides, '--dft-overrides')
    dft = {
        'engine': orm.Str(engine),
        'code': load_dft_code(engine, code_label, '--dft-code'),
        'protocol': orm.Str(protocol),
    }
    if overrides:
        dft['overrides'] = orm.Dict(overrides)
    inputs = {'dft': dft}
    if max_concurrent:
        inputs['max_concurrent'] = orm.Int(max_concurrent)
    return inputs


def load_dft_code(engine: str, code_label: str | None, param_hint: str):
    """The code ``code_label`` (default: the engine's code from ``aiida-hpcai setup``); a usage error otherwise."""
    from aiida import orm

    code_label = code_label or DEFAULT_CODES[engine]
    try:
        return orm.load_code(code_label)
    except Exception as exception:  # noqa: BLE001 -- NotExistent or MultipleObjectsError
        raise click.BadParameter(
            f'{code_label}: {exception} (run `aiida-hpcai setup`?)', param_hint=param_hint
        ) from exception


def _read_one_structure(file):
    """The one structure of FILE, validated like every other input (known elements, no overlapping atoms, ...)."""
    from aiida_hpcai.data.structure_set import StructureSet

    structures = StructureSet.from_files([file])
    for row in structures.get_skipped():
        detail = f' ({row["detail"]})' if row.get('detail') else ''
        raise click.BadParameter(f'{row["id"]}: {row["reason"]}{detail}', param_hint='FILE')
    if structures.count != 1:
        raise click.BadParameter(f'{file.name} holds {structures.count} structures; dft takes one', param_hint='FILE')
    return structures.get_pymatgen(0)


def _print_results(node, structure):
    from rich.console import Console
    from rich.table import Table

    from aiida_hpcai.workchains.dft import DftWorkChain

    outputs = node.outputs
    table = Table(title=f'hpcai.dft<{node.pk}> {structure.composition.reduced_formula}')
    table.add_column('quantity')
    table.add_column('value', justify='right')
    rows = [
        ('total energy (eV)', 'total_energy', '{:.5f}'),
        ('energy per atom (eV/atom)', 'energy_per_atom', '{:.5f}'),
        ('formation energy (eV/atom)', 'formation_energy_per_atom', '{:.4f}'),
        ('formation energy, uncorrected (eV/atom)', 'formation_energy_per_atom_uncorrected', '{:.4f}'),
        ('band gap (eV)', 'band_gap', '{:.3f}'),
        ('total magnetization (μB/cell)', 'total_magnetization', '{:.3f}'),
    ]
    for title, name, form in rows:
        if name in outputs:
            table.add_row(title, form.format(outputs[name].value))
    if 'energy_corrections' in outputs:
        from ..engines.corrections import on_mp_scale

        corrections = outputs.energy_corrections.get_dict()
        for item in corrections['adjustments']:
            table.add_row(f'  {item["name"]} (eV/atom)', f'{item["per_atom"]:.4f}')
        hubbard_u = corrections.get('hubbard_u', {})
        if hubbard_u:
            table.add_row('  GGA+U, U (eV)', ', '.join(f'{element} {value:g}' for element, value in hubbard_u.items()))
        if not on_mp_scale(corrections) and corrections['scheme'] == 'mp2020':
            table.add_row('  not on MP scale: MP uses +U for', ', '.join(corrections['gga_u_elements']))
    computed = table.row_count
    if 'relaxed_structure' in outputs:
        relaxed = outputs.relaxed_structure
        kind = 'relaxed' if 'relax' not in node.inputs or node.inputs.relax.value else 'unrelaxed'
        table.add_row(f'{kind} volume (Å³/atom)', f'{relaxed.get_cell_volume() / len(relaxed.sites):.3f}')
        table.add_row(f'{kind} structure', f'StructureData<{relaxed.pk}>')
    if 'identity' in outputs:
        for key, value in outputs.identity.get_dict().items():
            table.add_row(key, str(value))
    if computed or node.is_finished_ok:  # a run that computed nothing gets its error line alone
        Console().print(table)
    if node.is_finished_ok:
        echo.echo_success(f'hpcai.dft<{node.pk}> finished')
        return
    hint = ''
    if node.exit_status == DftWorkChain.exit_codes.ERROR_REFERENCE_MISSING.status:
        hint = ' From the command line: `aiida-hpcai dft --no-formation-energy ...` skips the formation energy.'
    echo.echo_error(f'hpcai.dft<{node.pk}> failed [{node.exit_status}]: {node.exit_message}.{hint}')
    raise click.exceptions.Exit(1)
