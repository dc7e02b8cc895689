"""Benchmark: ``hpcai.dft`` (Quantum ESPRESSO) on generated candidates with the relaxation at the protocol's k-point
spacing against a coarser one, the static SCF at the protocol's in both -> ``results/dft_relax_kpoints.json``.

A generated cell is far from a minimum and has no symmetry (pw.x: "No symmetry found"), so its relaxation takes
tens of BFGS steps, each an SCF over every k-point of the mesh: in the coordinate loop's MgO request a 4-atom cell
had relaxed for 57 minutes at the ``fast`` protocol (112 k-points) and was not done. The relaxation's mesh only
has to get the geometry right; the energy comes from the static SCF at the protocol's spacing. Per structure both
runs go one after the other on a fresh embedded profile, with the same protocol and the override
``{kpoints_distance: <coarse>, scf: {kpoints_distance: <protocol's>}}`` for the second; the record holds wall
time, BFGS steps and k-points of the relaxation, the energy per atom of the static SCF, the relaxed lattice,
whether StructureMatcher (the screening's tolerances) matches the two relaxed structures, and the ratios.

The default structures are candidates that the shipped EquiCSP generated in the coordinate loop's first
iteration (``benchmarks/data/loop_candidates.extxyz``: the MgO and SiC requests' 2-atom cells).

    python benchmarks/dft_relax_kpoints.py --workdir /tmp/hpcai-relax-k [--coarse 0.5] [--protocol fast]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

from predict_fixed_cost import load_workdir_profile

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
CANDIDATES = REPO_ROOT / 'benchmarks' / 'data' / 'loop_candidates.extxyz'


def run_dft(structure, protocol_name: str, overrides: dict | None, processes: int) -> dict:
    """``hpcai.dft`` (no formation energy: the references would differ between the settings), timed."""
    from aiida import orm
    from aiida.engine import run_get_node

    from aiida_hpcai.cli.dft import load_dft_code
    from aiida_hpcai.workchains.dft import DftWorkChain

    inputs = {
        'structure': structure,
        'engine': orm.Str('quantumespresso'),
        'code': load_dft_code('quantumespresso', None, '--dft-code'),
        'protocol': orm.Str(protocol_name),
        'options': orm.Dict({'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': processes}}),
        'compute_formation_energy': orm.Bool(False),
    }
    if overrides:
        inputs['overrides'] = orm.Dict(overrides)
    started = time.perf_counter()
    _, node = run_get_node(DftWorkChain, **inputs)
    seconds = time.perf_counter() - started
    if not node.is_finished_ok:
        return {'exit_status': node.exit_status, 'exit_message': node.exit_message, 'seconds': seconds}
    calculations = [n for n in node.called_descendants if n.process_type == 'aiida.calculations:quantumespresso.pw']
    relax_calcs = [n for n in calculations if n.inputs.parameters['CONTROL']['calculation'] in ('relax', 'vc-relax')]
    scf_calcs = [n for n in calculations if n not in relax_calcs]
    relax_parameters = [n.outputs.output_parameters.get_dict() for n in relax_calcs if 'output_parameters' in n.outputs]
    scf_parameters = scf_calcs[-1].outputs.output_parameters.get_dict()
    relaxed = node.outputs.relaxed_structure.get_pymatgen_structure()
    return {
        'exit_status': 0,
        'seconds': seconds,
        'relax_calculations': len(relax_calcs),
        'relax_seconds': sum(p.get('wall_time_seconds', 0.0) for p in relax_parameters),
        'relax_bfgs_steps': sum(p.get('number_ionic_steps', 0) for p in relax_parameters),
        'relax_k_points': [p.get('number_of_k_points') for p in relax_parameters],
        'scf_seconds': scf_parameters.get('wall_time_seconds'),
        'scf_k_points': scf_parameters.get('number_of_k_points'),
        'energy_per_atom_eV': node.outputs.energy_per_atom.value,
        'relaxed_lattice_abc': [round(value, 4) for value in relaxed.lattice.abc],
        'relaxed_lattice_angles': [round(value, 3) for value in relaxed.lattice.angles],
        'relaxed_volume_per_atom': relaxed.volume / len(relaxed),
        'relaxed': relaxed,
    }


def compare(protocol_run: dict, coarse_run: dict) -> dict:
    from aiida_hpcai.screening.filters import ScreeningParameters

    matcher = ScreeningParameters().matcher()
    return {
        'time_ratio_protocol_over_coarse': protocol_run['seconds'] / coarse_run['seconds'],
        'relax_time_ratio_protocol_over_coarse': protocol_run['relax_seconds'] / coarse_run['relax_seconds'],
        'energy_difference_meV_per_atom': 1000
        * (coarse_run['energy_per_atom_eV'] - protocol_run['energy_per_atom_eV']),
        'volume_difference_percent': 100
        * (coarse_run['relaxed_volume_per_atom'] / protocol_run['relaxed_volume_per_atom'] - 1),
        'relaxed_structures_match': bool(matcher.fit(protocol_run['relaxed'], coarse_run['relaxed'])),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--workdir', type=pathlib.Path, default=pathlib.Path('/tmp/hpcai-relax-k'))
    parser.add_argument('--structures', type=pathlib.Path, default=CANDIDATES)
    parser.add_argument('--protocol', default='fast')
    parser.add_argument('--coarse', type=float, default=0.5, help="the relaxation's k-point spacing, 1/Å (0.5)")
    parser.add_argument('--num-mpiprocs', type=int, default=2)
    parser.add_argument('--output', type=pathlib.Path, default=None)
    args = parser.parse_args(argv)

    from aiida_hpcai.models.evaluation import RESULTS_DIR, run_record

    output = args.output or RESULTS_DIR / 'dft_relax_kpoints.json'
    load_before = os.getloadavg()
    load_workdir_profile(args.workdir)
    from aiida_hpcai.data.structure_set import StructureSet
    from aiida_hpcai.engines import get_engine

    protocol = get_engine('quantumespresso').load_protocol(args.protocol)
    fine = protocol['scf']['kpoints_distance'] or protocol['kpoints_distance']
    overrides = {'kpoints_distance': args.coarse, 'scf': {'kpoints_distance': fine}}
    structures = StructureSet.from_files([args.structures])
    payload = {
        'benchmark': 'dft_relax_kpoints',
        'what': 'hpcai.dft (QE) relax + static SCF of generated candidates, the relaxation at the protocol k-point '
        'spacing and at a coarser one (the static SCF at the protocol spacing in both), one after the other',
        'settings': {
            'protocol': args.protocol,
            'relax_kpoints_distance': {'protocol': protocol['kpoints_distance'], 'coarse': args.coarse},
            'scf_kpoints_distance': fine,
            'overrides_of_the_coarse_run': overrides,
            'num_mpiprocs': args.num_mpiprocs,
            'structures': str(
                args.structures.resolve().relative_to(REPO_ROOT)
                if args.structures.resolve().is_relative_to(REPO_ROOT)
                else args.structures
            ),
        },
        'structures': {},
    }
    for index, identifier in enumerate(structures.ids):
        structure = structures.get_structuredata(index)
        entry = {'formula': structure.get_formula(), 'atoms': len(structure.sites)}
        for name, setting in (('protocol', None), ('coarse_relax', overrides)):
            print(f'{identifier}: hpcai.dft, relaxation k spacing {name}', flush=True)
            entry[name] = run_dft(structure, args.protocol, setting, args.num_mpiprocs)
            shown = {key: value for key, value in entry[name].items() if key != 'relaxed'}
            print(f'{identifier} {name}: {shown}', flush=True)
        if all(entry[name].get('exit_status') == 0 for name in ('protocol', 'coarse_relax')):
            entry['comparison'] = compare(entry['protocol'], entry['coarse_relax'])
            print(f'{identifier}: {entry["comparison"]}', flush=True)
        for name in ('protocol', 'coarse_relax'):
            entry[name].pop('relaxed', None)
        payload['structures'][identifier] = entry
        payload['run'] = run_record(load_before=load_before)
        output.write_text(json.dumps(payload, indent=2) + '\n')
    compared = [entry for entry in payload['structures'].values() if 'comparison' in entry]
    if compared:
        payload['summary'] = {
            'structures_compared': len(compared),
            'total_time_ratio_protocol_over_coarse': sum(entry['protocol']['seconds'] for entry in compared)
            / sum(entry['coarse_relax']['seconds'] for entry in compared),
            'largest_energy_difference_meV_per_atom': max(
                abs(entry['comparison']['energy_difference_meV_per_atom']) for entry in compared
            ),
            'relaxed_structures_matching': sum(entry['comparison']['relaxed_structures_match'] for entry in compared),
        }
        payload['run'] = run_record(load_before=load_before)
        output.write_text(json.dumps(payload, indent=2) + '\n')
    print(f'wrote {output}', flush=True)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
