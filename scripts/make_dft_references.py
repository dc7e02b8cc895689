"""Write ``aiida_hpcai/engines/reference_structures.json``: the elemental reference structures of ``hpcai.dft``.

For every element of the SSSP subset shipped in ``../shared/pseudos`` this picks, among the single-element
rows of ``mp_cgcnn.csv.gz`` (the dataset our formation energies are compared with), the row with the lowest
formation energy per atom (ties: fewest atoms). Gas-phase elements appear there as molecular crystals
(O2, N2, Cl2); they are marked ``molecular_crystal: true``: PBE without dispersion does not bind the
molecules to each other, so only the positions are relaxed, and their nearly flat bands let engines use a
coarser k-point mesh (``EngineAdapter.molecular_crystal_protocol``). The MP magnetization per atom is kept as the
initial magnetic moment (this is what makes the O2 reference a spin triplet). Elements without any
single-element row (or, for gas-phase elements, without a molecular-crystal row: N) are listed under
``missing`` with the reason; ``hpcai.dft`` exits with ``ERROR_REFERENCE_MISSING`` for them.

The JSON is derived metadata (ids and a few structures), not the dataset. Run:

    python scripts/make_dft_references.py [--data-dir ../shared/data] [--pseudo-dir ../shared/pseudos]
"""

import argparse
import datetime
import json
import pathlib

import pandas as pd
from pymatgen.core import Composition, Structure

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
OUTPUT = REPO_ROOT / 'aiida_hpcai' / 'engines' / 'reference_structures.json'
GAS_PHASE_ELEMENTS = {'H', 'N', 'O', 'F', 'Cl', 'He', 'Ne', 'Ar', 'Kr', 'Xe', 'Rn'}
# A gas-phase element's entry must be a molecular crystal of diatomic molecules: every atom with exactly
# one neighbour closer than this (Å). mp_cgcnn's only N entries are polymeric (mp-754514: chains with two
# neighbours at 1.30 Å), far above N2 in energy; taking one would shift every nitride by tenths of eV/atom.
BOND_CUTOFF = {'Cl': 2.3, 'Br': 2.6, 'I': 3.0}
DEFAULT_BOND_CUTOFF = 1.6
# Layered elements: PBE without dispersion does not bind their layers (a vc-relax of graphite drifts apart),
# so their references keep the dataset's cell (``layered: true``; ``references.reference_tag``).
LAYERED_ELEMENTS = {'C', 'P'}
# Below this |moment| per atom (μB) the MP entry counts as non-magnetic.
MAGNETIC_THRESHOLD = 0.05


def is_diatomic_crystal(structure, element) -> bool:
    cutoff = BOND_CUTOFF.get(element, DEFAULT_BOND_CUTOFF)
    return all(len(structure.get_neighbors(site, cutoff)) == 1 for site in structure)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data-dir', type=pathlib.Path, default=REPO_ROOT.parent / 'shared' / 'data')
    parser.add_argument('--pseudo-dir', type=pathlib.Path, default=REPO_ROOT.parent / 'shared' / 'pseudos')
    parser.add_argument('--output', type=pathlib.Path, default=OUTPUT)
    args = parser.parse_args()

    cutoffs = json.loads(
        (args.pseudo_dir / 'sssp_pbe_efficiency_1.3.0_subset' / 'sssp_efficiency_subset.json').read_text()
    )
    elements = sorted(key for key, value in cutoffs.items() if isinstance(value, dict))

    frame = pd.read_csv(args.data_dir / 'mp_cgcnn' / 'mp_cgcnn.csv.gz')
    frame = frame[frame.formation_energy_per_atom > -5]  # the README's broken entries
    compositions = frame.formula.map(Composition)
    elemental = frame[compositions.map(lambda composition: len(composition.elements) == 1)].copy()
    elemental['element'] = elemental.formula.map(lambda formula: Composition(formula).elements[0].symbol)

    references, missing = {}, {}
    for element in elements:
        rows = elemental[elemental.element == element].sort_values(['formation_energy_per_atom', 'natoms'])
        if rows.empty:
            missing[element] = 'no single-element row in mp_cgcnn'
            continue
        candidates = [(row, Structure.from_str(row.cif, fmt='cif')) for _, row in rows.iterrows()]
        if element in GAS_PHASE_ELEMENTS:
            candidates = [(row, structure) for row, structure in candidates if is_diatomic_crystal(structure, element)]
            if not candidates:
                missing[element] = f'no molecular-crystal row in mp_cgcnn (rows: {", ".join(rows.material_id)})'
                continue
        row, structure = candidates[0]
        moment = float(row.total_magnetization) / len(structure)
        references[element] = {
            'material_id': row.material_id,
            'formula': row.formula,
            'formation_energy_per_atom': float(row.formation_energy_per_atom),
            'number_of_atoms': len(structure),
            'magnetic_moment_per_atom': round(moment, 3) if abs(moment) > MAGNETIC_THRESHOLD else 0.0,
            'molecular_crystal': element in GAS_PHASE_ELEMENTS,
            'layered': element in LAYERED_ELEMENTS,
            'lattice': structure.lattice.matrix.round(8).tolist(),
            'species': [site.specie.symbol for site in structure],
            'frac_coords': structure.frac_coords.round(8).tolist(),
        }

    content = {
        'description': 'Elemental reference structures of hpcai.dft: per element, the single-element mp_cgcnn row '
        'with the lowest formation energy per atom (ties: fewest atoms). Made by scripts/make_dft_references.py.',
        'source': 'shared/data/mp_cgcnn/mp_cgcnn.csv.gz (Materials Project, CC-BY 4.0)',
        'generated': datetime.date.today().isoformat(),
        'references': references,
        'missing': missing,
    }
    args.output.write_text(json.dumps(content, indent=1) + '\n')
    print(f'{len(references)} references written to {args.output}; missing: {missing or "-"}')


if __name__ == '__main__':
    main()
