"""The one on-disk format for a set of crystal structures: a single ``.npz`` file.

It is what a StructureSet node keeps in its repository and what the model program reads and
writes in a CalcJob's folder, so it lives here, free of any AiiDA import.

Layout (all arrays, ``allow_pickle=False``):

- ``numbers``  (n_atoms_total,) int16  atomic numbers, structures concatenated in order
- ``positions`` (n_atoms_total, 3) float64  Cartesian coordinates in Angstrom
- ``cells``    (n_structures, 3, 3) float64  lattice vectors as rows, Angstrom
- ``pbc``      (n_structures, 3) bool
- ``offsets``  (n_structures + 1,) int64  structure i owns atoms offsets[i]:offsets[i+1]
- ``ids``      (n_structures,) unicode  identifiers (material ids, file names, ...)
- ``label__<name>`` (n_structures,) float64  optional per-structure labels, NaN where unknown
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

FORMAT_VERSION = 1
_LABEL_PREFIX = 'label__'


@dataclasses.dataclass
class StructureArrays:
    """Many periodic structures as flat numpy arrays (the in-memory twin of the npz file)."""

    numbers: np.ndarray
    positions: np.ndarray
    cells: np.ndarray
    pbc: np.ndarray
    offsets: np.ndarray
    ids: np.ndarray
    labels: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.numbers = np.asarray(self.numbers, dtype=np.int16)
        self.positions = np.asarray(self.positions, dtype=np.float64).reshape(-1, 3)
        self.cells = np.asarray(self.cells, dtype=np.float64).reshape(-1, 3, 3)
        self.pbc = np.asarray(self.pbc, dtype=bool).reshape(-1, 3)
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        self.ids = np.asarray([str(i) for i in self.ids], dtype=str)
        self.labels = {name: np.asarray(values, dtype=np.float64) for name, values in self.labels.items()}
        n = len(self.cells)
        if len(self.offsets) != n + 1 or self.offsets[0] != 0 or self.offsets[-1] != len(self.numbers):
            raise ValueError('offsets do not match the number of structures and atoms')
        if len(self.positions) != len(self.numbers) or len(self.pbc) != n or len(self.ids) != n:
            raise ValueError('inconsistent array lengths in structure set')
        for name, values in self.labels.items():
            if values.shape != (n,):
                raise ValueError(f'label {name!r} has shape {values.shape}, expected ({n},)')

    def __len__(self) -> int:
        return len(self.cells)

    @property
    def natoms(self) -> np.ndarray:
        return np.diff(self.offsets)

    def atoms_of(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Return ``(numbers, positions, cell, pbc)`` of structure ``index``."""
        start, stop = self.offsets[index], self.offsets[index + 1]
        return self.numbers[start:stop], self.positions[start:stop], self.cells[index], self.pbc[index]

    def to_pymatgen(self, index: int):
        from pymatgen.core import Lattice, Structure

        numbers, positions, cell, _ = self.atoms_of(index)
        return Structure(Lattice(cell), numbers.tolist(), positions, coords_are_cartesian=True)

    def iter_pymatgen(self) -> Iterator:
        for index in range(len(self)):
            yield self.to_pymatgen(index)

    def subset(self, indices: Sequence[int]) -> StructureArrays:
        """Return a new set holding the structures at ``indices``, in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        pieces = [np.arange(self.offsets[i], self.offsets[i + 1]) for i in indices]
        atom_index = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
        natoms = self.natoms[indices]
        return StructureArrays(
            numbers=self.numbers[atom_index],
            positions=self.positions[atom_index],
            cells=self.cells[indices],
            pbc=self.pbc[indices],
            offsets=np.concatenate([[0], np.cumsum(natoms)]),
            ids=self.ids[indices],
            labels={name: values[indices] for name, values in self.labels.items()},
        )

    def formulae(self) -> list[str]:
        """Full (not reduced) Hill formula of every structure."""
        from pymatgen.core.periodic_table import Element

        out = []
        for index in range(len(self)):
            numbers = self.atoms_of(index)[0]
            values, counts = np.unique(numbers, return_counts=True)
            symbols = {Element.from_Z(int(z)).symbol: int(c) for z, c in zip(values, counts)}
            out.append(_hill_formula(symbols))
        return out

    def elements(self) -> list[str]:
        from pymatgen.core.periodic_table import Element

        return sorted({Element.from_Z(int(z)).symbol for z in np.unique(self.numbers)})

    def formulae_digest(self) -> str:
        """sha256 over the ordered list of formulae: a cheap fingerprint of what the set holds."""
        return hashlib.sha256('\n'.join(self.formulae()).encode()).hexdigest()


def _hill_formula(counts: dict[str, int]) -> str:
    order = sorted(counts)
    if 'C' in counts:
        order = ['C'] + (['H'] if 'H' in counts else []) + [s for s in order if s not in ('C', 'H')]
    return ''.join(f'{s}{counts[s] if counts[s] != 1 else ""}' for s in order)


def from_pymatgen(
    structures: Iterable, ids: Sequence[str] | None = None, labels: dict[str, Sequence[float]] | None = None
) -> StructureArrays:
    """Build a set from pymatgen ``Structure`` (or ASE ``Atoms``) objects.

    Disordered sites (partial occupancies) are refused: every model and DFT code here needs one
    element per site.
    """
    numbers, positions, cells, pbc, natoms = [], [], [], [], []
    structures = list(structures)
    for structure in structures:
        if hasattr(structure, 'get_atomic_numbers'):  # ASE Atoms
            numbers.append(np.asarray(structure.get_atomic_numbers()))
            positions.append(np.asarray(structure.get_positions()))
            cells.append(np.asarray(structure.get_cell()))
            pbc.append(np.asarray(structure.get_pbc()))
        else:
            if not structure.is_ordered:
                raise ValueError(f'disordered structure {structure.composition} cannot be stored')
            numbers.append(np.asarray(structure.atomic_numbers))
            positions.append(structure.cart_coords)
            cells.append(structure.lattice.matrix)
            pbc.append(np.asarray(structure.lattice.pbc))
        natoms.append(len(numbers[-1]))
    if ids is None:
        ids = [str(i) for i in range(len(structures))]
    if len(ids) != len(structures):
        raise ValueError('ids and structures differ in length')
    return StructureArrays(
        numbers=np.concatenate(numbers) if numbers else np.zeros(0, dtype=np.int16),
        positions=np.concatenate(positions) if positions else np.zeros((0, 3)),
        cells=np.stack(cells) if cells else np.zeros((0, 3, 3)),
        pbc=np.stack(pbc) if pbc else np.zeros((0, 3), dtype=bool),
        offsets=np.concatenate([[0], np.cumsum(natoms, dtype=np.int64)]),
        ids=list(ids),
        labels=dict(labels or {}),
    )


def write_npz(arrays: StructureArrays, target: str | os.PathLike | io.IOBase) -> None:
    """Write a set to ``target`` (a path or a binary file handle)."""
    payload = {
        'format_version': np.asarray(FORMAT_VERSION),
        'numbers': arrays.numbers,
        'positions': arrays.positions,
        'cells': arrays.cells,
        'pbc': arrays.pbc,
        'offsets': arrays.offsets,
        'ids': arrays.ids,
    }
    for name, values in arrays.labels.items():
        payload[_LABEL_PREFIX + name] = values
    np.savez(target, **payload)


def read_npz(source: str | os.PathLike | io.IOBase) -> StructureArrays:
    """Read a set written by :func:`write_npz`."""
    with np.load(source, allow_pickle=False) as data:
        version = int(data['format_version'])
        if version != FORMAT_VERSION:
            raise ValueError(f'unsupported structure-set format version {version}')
        labels = {key[len(_LABEL_PREFIX) :]: data[key] for key in data.files if key.startswith(_LABEL_PREFIX)}
        return StructureArrays(
            numbers=data['numbers'],
            positions=data['positions'],
            cells=data['cells'],
            pbc=data['pbc'],
            offsets=data['offsets'],
            ids=data['ids'],
            labels=labels,
        )
