"""Benchmark: one Quantum ESPRESSO SCF of an elemental reference in spglib's primitive basis against the
Niggli-reduced basis of the same lattice that ``standardize_structure`` now gives -> ``results/dft_cell_basis.json``.

spglib's rhombohedral primitive vectors of a long-period cell are needles (MP's lowest-energy carbon, the
reference of every C compound: three 11.9 Å vectors 11.9 degrees apart), and pw.x's FFT grid follows vector
lengths. Per element (default C), both cells run the same SCF (``hpcai.dft``'s engine adapter and protocol,
``fast``, 2 MPI ranks, the k-point spacing of the protocol), one after the other on a fresh embedded profile, and
the record holds wall time, k-points, FFT grid and total energy per atom of each, and their ratio.

    python benchmarks/dft_cell_basis.py --workdir /tmp/hpcai-cell-basis [--elements C Li] [--protocol fast]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import time

from predict_fixed_cost import load_workdir_profile


def spglib_primitive(structure):
    """The cell ``standardize_structure`` gave before its basis was Niggli-reduced: spglib's standardized primitive."""
    import spglib
    from aiida import orm
    from pymatgen.core import Lattice, Structure

    pymatgen = structure.get_pymatgen_structure()
    cell = (pymatgen.lattice.matrix, pymatgen.frac_coords, [site.specie.Z for site in pymatgen])
    lattice, positions, numbers = spglib.standardize_cell(cell, to_primitive=True, no_idealize=False, symprec=1e-3)
    return orm.StructureData(pymatgen=Structure(Lattice(lattice), numbers, positions))


def scf(structure, protocol_name: str, processes: int) -> dict:
    """One SCF of ``structure`` through the engine adapter's PwBaseWorkChain builder, timed."""
    from aiida.engine import run_get_node

    from aiida_hpcai.cli.dft import load_dft_code
    from aiida_hpcai.engines.base import get_engine

    adapter = get_engine('quantumespresso')
    protocol = adapter.load_protocol(protocol_name)
    code = load_dft_code('quantumespresso', None, '--dft-code')
    options = {'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': processes}}
    builder = adapter.get_scf_builder(structure, code, protocol, options=options)
    started = time.perf_counter()
    _, node = run_get_node(builder)
    seconds = time.perf_counter() - started
    if not node.is_finished_ok:
        return {'exit_status': node.exit_status, 'exit_message': node.exit_message, 'seconds': seconds}
    calculation = node.called[-1]
    output = calculation.outputs.retrieved.base.repository.get_object_content('aiida.out')
    fft = re.search(r'Dense  grid:.*FFT dimensions: \(\s*(\d+),\s*(\d+),\s*(\d+)\)', output)
    parameters = node.outputs.output_parameters.get_dict()
    pymatgen = structure.get_pymatgen_structure()
    return {
        'exit_status': 0,
        'seconds': seconds,
        'pw_wall_seconds': parameters.get('wall_time_seconds'),
        'lattice_abc': [round(value, 4) for value in pymatgen.lattice.abc],
        'lattice_angles': [round(value, 3) for value in pymatgen.lattice.angles],
        'k_points': parameters.get('number_of_k_points'),
        'fft_grid': [int(value) for value in fft.groups()] if fft else None,
        'symmetries': parameters.get('number_of_symmetries'),
        'scf_iterations': parameters.get('convergence_info', {}).get('scf_conv', {}).get('n_scf_steps'),
        'energy_per_atom_eV': parameters['energy'] / len(pymatgen),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--workdir', type=pathlib.Path, default=pathlib.Path('/tmp/hpcai-cell-basis'))
    parser.add_argument('--elements', nargs='+', default=['C'])
    parser.add_argument('--protocol', default='fast')
    parser.add_argument('--num-mpiprocs', type=int, default=2)
    parser.add_argument('--output', type=pathlib.Path, default=None)
    args = parser.parse_args(argv)

    from aiida_hpcai.models.evaluation import RESULTS_DIR, run_record

    output = args.output or RESULTS_DIR / 'dft_cell_basis.json'
    load_before = os.getloadavg()
    load_workdir_profile(args.workdir)
    from aiida_hpcai.engines import references
    from aiida_hpcai.workchains.dft import standardize_structure

    payload = {
        'benchmark': 'dft_cell_basis',
        'what': "one pw.x SCF of an elemental reference in spglib's primitive basis and in the Niggli-reduced basis "
        'of the same lattice (what hpcai.dft standardizes to now), same protocol, one after the other',
        'settings': {'protocol': args.protocol, 'num_mpiprocs': args.num_mpiprocs, 'engine': 'quantumespresso'},
        'elements': {},
    }
    for element in args.elements:
        given = references.get_reference_structure(element)
        cells = {'niggli_reduced': standardize_structure(given), 'spglib_primitive': spglib_primitive(given)}
        entry = {}
        for name, structure in cells.items():
            print(f'{element}: SCF in the {name} basis', flush=True)
            entry[name] = scf(structure, args.protocol, args.num_mpiprocs)
            print(f'{element} {name}: {entry[name]}', flush=True)
        if all(run.get('exit_status') == 0 for run in entry.values()):
            old, new = entry['spglib_primitive'], entry['niggli_reduced']
            entry['time_ratio_spglib_over_niggli'] = old['seconds'] / new['seconds']
            entry['energy_difference_meV_per_atom'] = 1000 * (new['energy_per_atom_eV'] - old['energy_per_atom_eV'])
        payload['elements'][element] = entry
        payload['run'] = run_record(load_before=load_before)
        output.write_text(json.dumps(payload, indent=2) + '\n')
    print(f'wrote {output}', flush=True)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
