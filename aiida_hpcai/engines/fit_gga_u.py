"""Fit an engine's own GGA/GGA+U constants: ``python -m aiida_hpcai.engines.fit_gga_u``.

MP runs the oxides and fluorides of Co, Cr, Fe, Mn, Mo, Ni, V and W with +U against plain-GGA metals, and adds
a constant per such metal atom fitted to its VASP runs. Quantum ESPRESSO's U energy is not VASP's (its projectors
differ), so MP's constants leave a QE +U formation energy off MP's scale (NiO: 0.48 eV/atom below). This tool runs
``hpcai.dft`` (the engine and protocol given, MP's U values, ``energy_correction`` mp2020) on compounds of the
``mp_cgcnn`` set with one +U metal each, and fits, per metal, the constant that puts their formation energies on
the dataset's (MP's) scale: ``natoms * (MP - uncorrected - anion corrections) / n_metal``, averaged over the
metal's compounds (:func:`aiida_hpcai.engines.corrections.fit_gga_u_constants`). With two or more compounds of a
metal the leave-one-out errors say how well one constant transfers to a compound it was not fitted on.

    python -m aiida_hpcai.engines.fit_gga_u mp-19009 mp-35925 --protocol fast             # run (or find) and fit
    python -m aiida_hpcai.engines.fit_gga_u mp-19009 mp-35925 --protocol fast --write     # ... and ship the fit

Runs use the current AiiDA profile and ``pw@localhost`` (``aiida-hpcai setup``); each finished ``hpcai.dft`` is
marked (extra ``hpcai_gga_u_fit``: the material id) and found again by a later call with the same identity, so an
interrupted fit resumes. ``--write`` replaces the fit of this identity (engine, pseudopotential family, merged
protocol) in ``aiida_hpcai/engines/gga_u_constants.json``, which ``hpcai.dft`` then applies to runs of that
identity (``EngineAdapter.gga_u_constants``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from .base import GGA_U_CONSTANTS_FILE, GGA_U_FIT_KEYS
from .corrections import fit_gga_u_constants, mp_hubbard_u

FIT_EXTRA = 'hpcai_gga_u_fit'


class FitError(ValueError):
    """A compound the fit cannot use, or a run that failed: the message says which and why."""


def compound_row(material_id: str, reference: float, node) -> dict:
    """The fit's row of one finished ``hpcai.dft`` of a compound with one +U metal, against MP's ``reference``."""
    if not node.is_finished_ok:
        raise FitError(f'{material_id}: hpcai.dft<{node.pk}> failed [{node.exit_status}] {node.exit_message}')
    outputs = node.outputs
    record = outputs.energy_corrections.get_dict()
    structure = outputs.relaxed_structure.get_pymatgen_structure()
    expected = mp_hubbard_u(structure)
    if len(expected) != 1 or record['hubbard_u'] != expected:
        raise FitError(
            f'{material_id}: the run applied U {record["hubbard_u"]}, MP uses {expected}; one +U metal needed'
        )
    (element,) = expected
    return {
        'material_id': material_id,
        'formula': structure.composition.reduced_formula,
        'element': element,
        'natoms': len(structure),
        'n_element': int(structure.composition[element]),
        'formation_energy_uncorrected': outputs.formation_energy_per_atom_uncorrected.value,
        'anion_per_atom': sum(item['per_atom'] for item in record['adjustments'] if 'anion correction' in item['name']),
        'reference': reference,
        'dft_pk': node.pk,
    }


def _finished_run(material_id: str, identity: dict):
    from aiida import orm

    from ..workchains.dft import DftWorkChain

    query = orm.QueryBuilder().append(
        DftWorkChain, filters={f'extras.{FIT_EXTRA}': material_id}, project='*', tag='dft'
    )
    query.append(orm.Dict, with_incoming='dft', edge_filters={'label': 'identity'}, project='attributes')
    for node, found in query.all():
        if node.is_finished_ok and all(found.get(key) == identity.get(key) for key in GGA_U_FIT_KEYS):
            return node
    return None


def run_compound(
    material_id: str,
    structure,
    engine: str,
    protocol: str,
    code,
    options: dict | None = None,
    overrides: dict | None = None,
):
    """The finished ``hpcai.dft`` of ``material_id`` for this identity (``overrides`` included): found again, or run
    now (and marked)."""
    from aiida import orm
    from aiida.engine import run_get_node

    from ..workchains.dft import DftWorkChain
    from .base import get_engine

    adapter = get_engine(engine)
    identity = adapter.identity(code, protocol, adapter.load_protocol(protocol, overrides))
    node = _finished_run(material_id, identity)
    if node is not None:
        print(f'{material_id}: hpcai.dft<{node.pk}> found', flush=True)
        return node
    inputs = {
        'structure': orm.StructureData(pymatgen=structure),
        'engine': orm.Str(engine),
        'code': code,
        'protocol': orm.Str(protocol),
        'energy_correction': orm.Str('mp2020'),
    }
    if options:
        inputs['options'] = orm.Dict(options)
    if overrides:
        inputs['overrides'] = orm.Dict(overrides)
    print(f'{material_id}: running hpcai.dft ({engine}, {protocol})', flush=True)
    _, node = run_get_node(DftWorkChain, **inputs)
    if node.is_finished_ok:
        node.base.extras.set(FIT_EXTRA, material_id)
    return node


def write_fit(identity: dict, fits: dict, rows: list[dict], command: str, path=GGA_U_CONSTANTS_FILE) -> dict:
    """Replace the fit of ``identity`` in the constants file (kept: the fits of other identities)."""
    import datetime

    from ..models.evaluation import git_commit

    content = json.loads(path.read_text(encoding='utf-8')) if path.is_file() else {'fits': []}
    entry = {
        'identity': {key: identity[key] for key in GGA_U_FIT_KEYS} | {'protocol': identity.get('protocol')},
        'constants': fits,
        'compounds': rows,
        'reference': 'mp_cgcnn formation_energy_per_atom (MP, the surrogate training scale)',
        'date': datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC'),
        'commit': git_commit(),
        'command': command,
    }
    others = [fit for fit in content['fits'] if any(fit['identity'].get(k) != identity[k] for k in GGA_U_FIT_KEYS)]
    content['fits'] = [*others, entry]
    path.write_text(json.dumps(content, indent=2) + '\n', encoding='utf-8')
    return entry


def main(argv=None) -> int:
    from ..cli.dft import overrides_argument

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('material_ids', nargs='+', help='mp_cgcnn compounds with one +U metal (MP rules)')
    parser.add_argument('--engine', default='quantumespresso')
    parser.add_argument('--protocol', default='fast')
    parser.add_argument(
        '--overrides',
        type=overrides_argument,
        default=None,
        help='overrides of the protocol as YAML/JSON text or file, as `aiida-hpcai dft --overrides`; a fit holds '
        'for runs of the same merged protocol only',
    )
    parser.add_argument('--code', default=None, help="the DFT code (default: the engine's of `aiida-hpcai setup`)")
    parser.add_argument('--data-dir', default=None, help='the shared data folder (default: $HPCAI_DATA_DIR)')
    parser.add_argument(
        '--write', action='store_true', help=f'replace the fit of this identity in {GGA_U_CONSTANTS_FILE.name}'
    )
    args = parser.parse_args(argv)

    import pathlib

    import pandas as pd
    from aiida import load_profile
    from pymatgen.core import Structure

    from ..cli.dft import load_dft_code
    from ..models.datasets import default_data_dir
    from .base import get_engine

    data_dir = pathlib.Path(args.data_dir) if args.data_dir else default_data_dir()
    source = (data_dir or pathlib.Path('.')) / 'mp_cgcnn' / 'mp_cgcnn.csv.gz'
    if not source.is_file():
        parser.error(f'no {source}: set HPCAI_DATA_DIR or --data-dir')
    frame = pd.read_csv(source).set_index('material_id')
    unknown = [m for m in args.material_ids if m not in frame.index]
    if unknown:
        parser.error(f'not in mp_cgcnn: {", ".join(unknown)}')
    try:
        adapter = get_engine(args.engine)
        protocol = adapter.load_protocol(args.protocol, args.overrides)
    except ValueError as error:
        parser.error(str(error))
    if adapter.mp_gga_u_constants_apply:
        parser.error(f"MP's constants already hold for {args.engine}: nothing to fit")
    structures = {m: Structure.from_str(frame.loc[m, 'cif'], fmt='cif') for m in args.material_ids}
    for material_id, structure in structures.items():
        if len(mp_hubbard_u(structure)) != 1:
            parser.error(
                f'{material_id} ({structure.composition.reduced_formula}): MP runs it with +U on '
                f'{sorted(mp_hubbard_u(structure)) or "no metal"}; the fit needs exactly one +U metal'
            )

    try:
        load_profile()
        code = load_dft_code(args.engine, args.code, '--code')
    except Exception as error:  # noqa: BLE001 - no profile, click's BadParameter for a missing code
        parser.error(str(error))
    identity = adapter.identity(code, args.protocol, protocol)
    rows, failures = [], []
    for material_id, structure in structures.items():
        node = run_compound(material_id, structure, args.engine, args.protocol, code, overrides=args.overrides)
        try:
            rows.append(compound_row(material_id, float(frame.loc[material_id, 'formation_energy_per_atom']), node))
        except FitError as error:
            failures.append(str(error))
            print(error, file=sys.stderr)
    fits = fit_gga_u_constants(rows)
    print(json.dumps({'identity': identity, 'constants': fits, 'failures': failures}, indent=2))
    if args.write and fits:
        # quoted, so that the recorded command runs again as it stands (--overrides holds spaces and braces)
        command = shlex.join(['python', '-m', 'aiida_hpcai.engines.fit_gga_u', *(argv or sys.argv[1:])])
        write_fit(identity, fits, rows, command)
        print(f'written to {GGA_U_CONSTANTS_FILE}')
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
