"""Benchmark: ``hpcai.dft`` with Quantum ESPRESSO on small mp_cgcnn structures -> ``results/dft_qe.json``.

For N structures (default 10) of 2-10 atoms from ``mp_cgcnn.csv.gz``, made only of elements that have an
SSSP-subset pseudopotential and an elemental reference (``engines/reference_structures.json``), with no
magnetic element (V, Cr, Mn, Fe, Co, Ni: spin-polarized runs cost several times more) and no element whose
SSSP normal cutoff exceeds 60 Ry (Cu, Ga), this runs relax + static SCF + formation energy and records:
wall time per structure (relax, SCF, the whole WorkChain), wall time of each elemental reference computed
on the way, our formation energy next to the dataset's, their MAE and mean offset.

The dataset's numbers are Materials Project's, with its fitted corrections for oxides and other anions
(see docs/source/dft.md). ``hpcai.dft`` adds MP2020's anion corrections by default and reports the raw PBE
value too: both are recorded, with their MAE and mean offset. Records of a run made before ``hpcai.dft``
had the corrections hold the raw value only; ``--resume`` adds the corrections to them, computed from the
dataset's structure (the correction depends on the composition and, for O, on the O-O distances), and says
so in the record (``correction_added_after_the_run``). ``--resume`` with nothing left to run only rescores.

``--gga-u`` adds compounds the Materials Project runs with GGA+U (``GGA_U_COMPOUNDS``: NiO, CoO, FeO, the
smallest such oxides in the dataset; spin-polarized; fluorides have no F reference), which ``hpcai.dft`` runs with MP's U values and
corrects with MP2020's GGA/GGA+U constants. ``mp_cgcnn`` is a 2017-18 MP snapshot, corrected with the legacy
``MaterialsProjectCompatibility``, whose +U constants differ (-2.164 against -2.541 eV per Ni in oxides, -2.733
against -2.256 per Fe): each +U record also carries the value with the legacy constants, to tell which scale the
dataset, and so the surrogate, is on.

Needs a profile prepared by ``aiida-hpcai setup`` (pw@localhost, the SSSP subset family). Run:

    python benchmarks/dft_qe.py [--count 10] [--protocol fast] [--num-mpiprocs 2] [--seed 0] [--resume] [--gga-u]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import time

import numpy as np

from aiida_hpcai.models.evaluation import run_record

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / 'benchmarks' / 'results' / 'dft_qe.json'
EXCLUDED_ELEMENTS = {'V', 'Cr', 'Mn', 'Fe', 'Co', 'Ni'}
MAX_CUTOFF_RY = 60.0
# MP runs these with GGA+U: NiO (mp-19009), CoO (mp-19128), FeO (mp-715262, the lower in energy of its two 4-atom
# rows)
GGA_U_COMPOUNDS = ('mp-19009', 'mp-19128', 'mp-715262')


def select_structures(data_dir: pathlib.Path, pseudo_dir: pathlib.Path, count: int, seed: int, gga_u: bool):
    """Pick ``count`` rows (2-10 atoms, allowed elements, several compositions) with a seeded generator, then the
    rows of :data:`GGA_U_COMPOUNDS` when ``gga_u``."""
    import pandas as pd
    from pymatgen.core import Composition

    from aiida_hpcai.engines.references import load_reference_table

    cutoffs = json.loads((pseudo_dir / 'sssp_pbe_efficiency_1.3.0_subset' / 'sssp_efficiency_subset.json').read_text())
    allowed = {
        element
        for element, values in cutoffs.items()
        if isinstance(values, dict) and values['cutoff_wfc_Ry'] <= MAX_CUTOFF_RY and element not in EXCLUDED_ELEMENTS
    }
    allowed &= set(load_reference_table()['references'])
    dataset = pd.read_csv(data_dir / 'mp_cgcnn' / 'mp_cgcnn.csv.gz')
    frame = dataset[(dataset.natoms >= 2) & (dataset.natoms <= 10) & (dataset.formation_energy_per_atom > -5)]
    elements = frame.formula.map(lambda formula: {element.symbol for element in Composition(formula).elements})
    # Compounds only (elements would compare a reference with itself), of allowed elements.
    frame = frame[elements.map(lambda symbols: len(symbols) >= 2 and symbols <= allowed)]
    frame = frame.drop_duplicates('formula')
    rng = np.random.default_rng(seed)
    chosen = frame.iloc[np.sort(rng.choice(len(frame), size=min(count, len(frame)), replace=False))]
    # Smallest first: an interrupted run has the most structures done.
    chosen = chosen.sort_values('natoms', kind='stable')
    if gga_u:
        chosen = pd.concat([chosen, dataset.set_index('material_id').loc[list(GGA_U_COMPOUNDS)].reset_index()])
    return chosen


def legacy_corrections_per_atom(structure, hubbard_u: dict) -> float:
    """The legacy ``MaterialsProjectCompatibility`` corrections (eV/atom) of a run with ``hubbard_u``, as MP applied
    them in ``mp_cgcnn``'s day: its anion, gas and GGA/GGA+U corrections (its POTCAR check has nothing to check)."""
    import warnings

    from pymatgen.entries.compatibility import MaterialsProjectCompatibility
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        compatibility = MaterialsProjectCompatibility()
        entry = ComputedStructureEntry(
            structure, 0.0, parameters={'run_type': 'GGA+U' if hubbard_u else 'GGA', 'hubbards': hubbard_u}
        )
        total = sum(
            float(getattr(value := correction.get_correction(entry), 'nominal_value', value))
            for correction in compatibility.corrections
            if type(correction).__name__ != 'PotcarCorrection'
        )
    return total / len(structure)


def wall_time(node) -> float:
    return (node.mtime - node.ctime).total_seconds()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--count', type=int, default=10)
    parser.add_argument('--protocol', default='fast')
    parser.add_argument('--code', default='pw@localhost')
    parser.add_argument('--num-mpiprocs', type=int, default=2)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--data-dir',
        type=pathlib.Path,
        default=pathlib.Path(os.environ.get('HPCAI_DATA_DIR', REPO_ROOT.parent / 'shared' / 'data')),
    )
    parser.add_argument(
        '--pseudo-dir',
        type=pathlib.Path,
        default=pathlib.Path(os.environ.get('HPCAI_PSEUDO_DIR', REPO_ROOT.parent / 'shared' / 'pseudos')),
    )
    parser.add_argument('--output', type=pathlib.Path, default=RESULTS)
    parser.add_argument(
        '--resume', action='store_true', help='keep the structures already in --output and run only the others'
    )
    parser.add_argument('--gga-u', action='store_true', help='add GGA_U_COMPOUNDS, run with GGA+U as MP runs them')
    args = parser.parse_args()

    from aiida import load_profile, orm
    from aiida.engine import run_get_node
    from pymatgen.core import Structure

    from aiida_hpcai.workchains.dft import DftWorkChain

    rows = select_structures(args.data_dir, args.pseudo_dir, args.count, args.seed, args.gga_u)
    options = {'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': args.num_mpiprocs}}

    records, references, earlier_elapsed, earlier_run = [], {}, 0.0, None
    if args.resume and args.output.exists():
        earlier = json.loads(args.output.read_text())
        records = earlier['structures']
        references = earlier['reference_wall_time_s']
        earlier_elapsed = earlier['summary']['wall_time_total_s']
        earlier_run = earlier['run']
        cifs = dict(zip(rows.material_id, rows.cif))
        for record in records:
            add_corrections_after_the_run(record, Structure.from_str(cifs[record['material_id']], fmt='cif'))
    done = {record['material_id'] for record in records}
    to_run = [row for _, row in rows.iterrows() if row.material_id not in done]
    if not to_run:
        write_results(args, records, references, earlier_elapsed, complete=True, earlier_run=earlier_run)
        return
    load_profile()
    code = orm.load_code(args.code)
    started = time.perf_counter() - earlier_elapsed
    for row in to_run:
        structure = Structure.from_str(row.cif, fmt='cif')
        tick = time.perf_counter()
        _, node = run_get_node(
            DftWorkChain,
            structure=orm.StructureData(pymatgen=structure),
            engine=orm.Str('quantumespresso'),
            code=code,
            protocol=orm.Str(args.protocol),
            options=orm.Dict(options),
            metadata={'label': f'benchmark {row.material_id}'},
        )
        total = time.perf_counter() - tick
        children = {link.link_label: link.node for link in node.base.links.get_outgoing().all()}
        new_references = {
            label.removeprefix('reference_'): wall_time(child)
            for label, child in children.items()
            if label.startswith('reference_')
        }
        references.update(new_references)
        record = {
            'material_id': row.material_id,
            'formula': row.formula,
            'natoms_dataset': int(row.natoms),
            'exit_status': node.exit_status,
            'pk': node.pk,
            'wall_time_s': round(total, 1),
            'wall_time_references_s': round(sum(new_references.values()), 1),
            'wall_time_relax_s': round(wall_time(children['relax']), 1) if 'relax' in children else None,
            'wall_time_scf_s': round(wall_time(children['scf']), 1) if 'scf' in children else None,
            # Other work on the machine slows MPI runs far more than their CPU share: keep the context.
            'load_average_1min_after': round(os.getloadavg()[0], 2),
            'formation_energy_dataset': float(row.formation_energy_per_atom),
            'band_gap_dataset': float(row.band_gap),
        }
        if node.is_finished_ok:
            outputs = node.outputs
            record.update(
                natoms_computed=len(outputs.relaxed_structure.sites),
                formation_energy=outputs.formation_energy_per_atom.value,
                formation_energy_uncorrected=outputs.formation_energy_per_atom_uncorrected.value,
                energy_corrections=outputs.energy_corrections.get_dict(),
                band_gap=outputs.band_gap.value if 'band_gap' in outputs else None,
                energy_per_atom=outputs.energy_per_atom.value,
                total_magnetization=outputs.total_magnetization.value,
            )
            hubbard_u = record['energy_corrections'].get('hubbard_u', {})
            if hubbard_u:
                relaxed = outputs.relaxed_structure.get_pymatgen_structure()
                record['formation_energy_legacy_constants'] = record[
                    'formation_energy_uncorrected'
                ] + legacy_corrections_per_atom(relaxed, hubbard_u)
        else:
            record['exit_message'] = node.exit_message
        records.append(record)
        print(json.dumps(record), flush=True)
        # Written after every structure, so that a long run interrupted still leaves its results.
        write_results(args, records, references, time.perf_counter() - started, complete=len(records) == len(rows))


def add_corrections_after_the_run(record: dict, structure) -> None:
    """Give a record of a run made before hpcai.dft had the anion corrections (raw value only) the corrected one."""
    from aiida_hpcai.engines.corrections import energy_corrections

    if 'formation_energy' not in record or 'formation_energy_uncorrected' in record:
        return
    corrections = energy_corrections(structure)  # those runs were plain GGA
    record['formation_energy_uncorrected'] = record['formation_energy']
    record['formation_energy'] = record['formation_energy_uncorrected'] + corrections['per_atom']
    record['energy_corrections'] = corrections
    record['correction_added_after_the_run'] = 'from the dataset structure'


def write_results(args, records, references, elapsed, complete, earlier_run=None):
    finished = [record for record in records if 'formation_energy' in record]
    gga_u_all = np.array([bool(record['energy_corrections'].get('hubbard_u')) for record in finished], dtype=bool)
    all_errors = np.array([record['formation_energy'] - record['formation_energy_dataset'] for record in finished])
    # The overall figures are of the plain-GGA compounds: QE's GGA+U ones are not on MP's scale (see dft.md)
    plain = [record for record, is_gga_u in zip(finished, gga_u_all) if not is_gga_u]
    errors = np.array([record['formation_energy'] - record['formation_energy_dataset'] for record in plain])
    raw_errors = np.array(
        [record['formation_energy_uncorrected'] - record['formation_energy_dataset'] for record in plain]
    )
    anion = np.array([bool(record['energy_corrections']['adjustments']) for record in plain], dtype=bool)
    legacy_errors = np.array(
        [
            record['formation_energy_legacy_constants'] - record['formation_energy_dataset']
            for record in finished
            if 'formation_energy_legacy_constants' in record
        ]
    )
    gap_errors = np.array(
        [record['band_gap'] - record['band_gap_dataset'] for record in finished if record['band_gap'] is not None]
    )
    result = {
        'description': 'hpcai.dft (Quantum ESPRESSO) relax + SCF + formation energy on mp_cgcnn structures',
        'complete': complete,
        'run': earlier_run or run_record(platform=platform.platform(), mpi_processes=args.num_mpiprocs),
        'protocol': args.protocol,
        'seed': args.seed,
        'selection': f'2-10 atoms, compounds of SSSP-subset elements with references, cutoff <= {MAX_CUTOFF_RY} Ry, '
        f'no {"/".join(sorted(EXCLUDED_ELEMENTS))}'
        + (f'; plus {", ".join(GGA_U_COMPOUNDS)} (GGA+U)' if args.gga_u else ''),
        'structures': records,
        'reference_wall_time_s': {element: round(seconds, 1) for element, seconds in references.items()},
        'summary': {
            'count': len(records),
            'finished_ok': len(finished),
            'formation_energy_mae': float(np.abs(errors).mean()) if len(errors) else None,
            'formation_energy_mean_offset': float(errors.mean()) if len(errors) else None,
            'formation_energy_uncorrected_mae': float(np.abs(raw_errors).mean()) if len(errors) else None,
            'formation_energy_uncorrected_mean_offset': float(raw_errors.mean()) if len(errors) else None,
            # compounds run with GGA+U (MP2020 constants, and the legacy ones of mp_cgcnn's MP), then the plain-GGA
            # compounds with an anion correction (oxides, nitrides, ...) and the others
            'gga_u_count': int(gga_u_all.sum()),
            'formation_energy_mae_gga_u': float(np.abs(all_errors[gga_u_all]).mean()) if gga_u_all.any() else None,
            'formation_energy_mae_gga_u_legacy_constants': (
                float(np.abs(legacy_errors).mean()) if gga_u_all.any() else None
            ),
            'formation_energy_mae_with_anion_correction': float(np.abs(errors[anion]).mean()) if anion.any() else None,
            'formation_energy_uncorrected_mae_with_anion_correction': (
                float(np.abs(raw_errors[anion]).mean()) if anion.any() else None
            ),
            'formation_energy_mae_without_anion_correction': (
                float(np.abs(errors[~anion]).mean()) if (~anion).any() else None
            ),
            'band_gap_mae': float(np.abs(gap_errors).mean()) if len(gap_errors) else None,
            'wall_time_per_structure_mean_s': float(
                np.mean([record['wall_time_s'] - record['wall_time_references_s'] for record in records])
            ),
            'wall_time_references_total_s': round(sum(references.values()), 1),
            'wall_time_total_s': round(elapsed, 1),
        },
    }
    if earlier_run is not None:
        result['rescored'] = run_record(note='summary recomputed from the records; nothing run')
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + '\n')
    if complete:
        print(json.dumps(result['summary'], indent=1))


if __name__ == '__main__':
    main()
