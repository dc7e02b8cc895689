"""Write the inputs of the README's main job from the shared datasets (nothing is committed).

- a held-out batch: the first N structures (<= 10 atoms) of the committed mp_cgcnn test split,
  as extxyz with their DFT labels, for `aiida-hpcai predict`;
- Si (mp-149) as CIF, for `aiida-hpcai dft`.
"""

import argparse
import pathlib

from aiida_hpcai.models.datasets import default_data_dir, load_dataset, read_split, split_indices, write_extxyz

REPO = pathlib.Path(__file__).resolve().parent.parent


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('output', type=pathlib.Path)
    parser.add_argument('--count', type=int, default=12)
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)

    dataset = load_dataset(
        default_data_dir() / 'mp_cgcnn' / 'mp_cgcnn.csv.gz',
        targets=['formation_energy_per_atom', 'band_gap'],
        cache=True,
        progress=True,
    )
    arrays = dataset.arrays
    test = split_indices(arrays.ids, read_split(REPO / 'benchmarks' / 'splits' / 'mp_cgcnn'))['test']
    small = [i for i in test if arrays.natoms[i] <= 10][: args.count]
    write_extxyz(arrays.subset(small), args.output / 'heldout.extxyz')
    silicon = arrays.ids.tolist().index('mp-149')
    arrays.to_pymatgen(silicon).to(filename=str(args.output / 'Si.cif'))
    print(
        f'wrote {len(small)} held-out structures to {args.output / "heldout.extxyz"} and Si to {args.output / "Si.cif"}'
    )


if __name__ == '__main__':
    main()
