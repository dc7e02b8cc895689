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

It also holds the one validation path every door uses (files, dataset imports, pymatgen/ASE
objects, StructureData): :func:`validate_atoms` and :class:`StructureBuilder`, which keeps the
good structures and records every refused one as a :class:`SkippedRow` with its id and reason.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import math
import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

FORMAT_VERSION = 1
_LABEL_PREFIX = 'label__'
_INT16 = np.iinfo(np.int16)

SKIP_REASONS = (
    'unparsable structure',
    'unknown element',
    'partial occupancy',
    'non-finite values',
    'collapsed cell',
    'overlapping atoms',
    'missing label',
    'duplicate id',
    'truncated file',
)
MIN_VOLUME_PER_ATOM = 1.0  # Angstrom^3; real solids have 5-100, below 1 the cell has collapsed
MIN_DISTANCE = 0.5  # Angstrom; the shortest real bond (H2) is 0.74
MAX_ATOMIC_NUMBER = 118


@dataclasses.dataclass(frozen=True)
class SkippedRow:
    """A structure that was refused: its id (file name, ``file#frame``, material id) and why."""

    id: str
    reason: str
    detail: str = ''


class InvalidStructure(ValueError):
    def __init__(self, reason: str, detail: str = ''):
        super().__init__(f'{reason}: {detail}' if detail else reason)
        self.reason = reason
        self.detail = detail


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
        numbers = np.asarray(self.numbers)
        # A silent int16 wrap-around turned pymatgen's hash-valued Z of a dummy species ('Xx') into a random
        # element number; refuse what does not fit instead.
        if numbers.size and (numbers.min() < _INT16.min or numbers.max() > _INT16.max):
            raise ValueError(f'atomic numbers outside {_INT16.min}..{_INT16.max}: not elements')
        self.numbers = numbers.astype(np.int16)
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


def concatenate(parts: list[tuple[str, StructureArrays]]) -> StructureArrays:
    """One set of the ``(prefix, arrays)`` parts, ids prefixed; labels kept where every part has them."""
    parts = [(prefix, arrays) for prefix, arrays in parts if len(arrays)]
    if not parts:
        empty = np.zeros(0)
        return StructureArrays(empty, empty, empty, empty, [0], [])
    shared = set.intersection(*(set(arrays.labels) for _, arrays in parts))
    offsets, total = [0], 0
    for _, arrays in parts:
        offsets.extend(total + arrays.offsets[1:])
        total += int(arrays.offsets[-1])
    return StructureArrays(
        numbers=np.concatenate([arrays.numbers for _, arrays in parts]),
        positions=np.concatenate([arrays.positions for _, arrays in parts]),
        cells=np.concatenate([arrays.cells for _, arrays in parts]),
        pbc=np.concatenate([arrays.pbc for _, arrays in parts]),
        offsets=offsets,
        ids=[f'{prefix}{identifier}' for prefix, arrays in parts for identifier in arrays.ids],
        labels={name: np.concatenate([arrays.labels[name] for _, arrays in parts]) for name in sorted(shared)},
    )


def _hill_formula(counts: dict[str, int]) -> str:
    order = sorted(counts)
    if 'C' in counts:
        order = ['C'] + (['H'] if 'H' in counts else []) + [s for s in order if s not in ('C', 'H')]
    return ''.join(f'{s}{counts[s] if counts[s] != 1 else ""}' for s in order)


# -- validation: the one path every door uses ------------------------------------------------------
def validate_atoms(
    numbers: np.ndarray, positions: np.ndarray, cell: np.ndarray, shortest_distance: float | None = None
) -> None:
    """Raise :class:`InvalidStructure` if the atoms cannot be a physical periodic crystal.

    ``shortest_distance``: the shortest interatomic distance when the caller knows it already (the
    model program has it from the neighbour graph), instead of computing it here.
    """
    if len(numbers) == 0:
        raise InvalidStructure('unparsable structure', 'no atoms')
    # Plain sums and a triple product instead of isfinite/det: the program runs this on every structure it predicts.
    if not math.isfinite(float(np.sum(positions)) + float(np.sum(cell))):
        raise InvalidStructure('non-finite values', 'NaN or infinite coordinates or lattice')
    if numbers.min() < 1 or numbers.max() > MAX_ATOMIC_NUMBER:
        bad = sorted({int(z) for z in numbers if not 1 <= z <= MAX_ATOMIC_NUMBER})
        raise InvalidStructure('unknown element', f'atomic numbers {bad} are not elements')
    (a1, a2, a3), (b1, b2, b3), (c1, c2, c3) = np.asarray(cell, dtype=float).tolist()
    volume = abs(a1 * (b2 * c3 - b3 * c2) - a2 * (b1 * c3 - b3 * c1) + a3 * (b1 * c2 - b2 * c1))
    if volume / len(numbers) < MIN_VOLUME_PER_ATOM:
        raise InvalidStructure('collapsed cell', f'{volume / len(numbers):.3g} A^3 per atom')
    shortest = _shortest_periodic_distance(positions, cell) if shortest_distance is None else shortest_distance
    if shortest < MIN_DISTANCE:
        raise InvalidStructure('overlapping atoms', f'two atoms {shortest:.3f} A apart, less than {MIN_DISTANCE} A')


_SHIFTS = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], dtype=float)


def _shortest_periodic_distance(positions: np.ndarray, cell: np.ndarray) -> float:
    """Shortest distance between two atoms, or between an atom and its own periodic image."""
    frac = np.linalg.solve(cell.T, positions.T).T
    delta = frac[:, None, :] - frac[None, :, :]
    delta -= np.round(delta)
    vectors = delta @ cell  # (n, n, 3) minimum-image differences
    shifts = _SHIFTS @ cell  # (27, 3) neighbouring cells
    # |v + s|^2 expanded: seven times faster than forming every (n, n, 27, 3) vector, same result to 1e-14 A
    squared = (vectors**2).sum(-1)[:, :, None] + 2 * (vectors @ shifts.T) + (shifts**2).sum(-1)[None, None, :]
    n = len(positions)
    squared[np.arange(n), np.arange(n), 13] = np.inf  # shift index 13 is (0, 0, 0): an atom and itself
    return float(np.sqrt(max(squared.min(), 0.0)))


def atoms_from_object(structure) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(numbers, positions, cell, pbc)`` of a pymatgen ``Structure`` or ASE ``Atoms``.

    Raises :class:`InvalidStructure` for a site that is not one real element: a disordered site
    (every model and DFT code here needs one element per site) or a dummy species such as ``Xx``
    (pymatgen gives those the hash of the symbol as atomic number).
    """
    if hasattr(structure, 'get_atomic_numbers'):  # ASE Atoms
        return (
            np.asarray(structure.get_atomic_numbers()),
            np.asarray(structure.get_positions(), dtype=np.float64),
            np.asarray(structure.get_cell(), dtype=np.float64),
            np.asarray(structure.get_pbc(), dtype=bool),
        )
    from pymatgen.core.periodic_table import DummySpecies

    if not structure.is_ordered:
        raise InvalidStructure('partial occupancy', f'disordered structure {structure.composition}')
    dummies = sorted({site.specie.symbol for site in structure if isinstance(site.specie, DummySpecies)})
    if dummies:
        raise InvalidStructure('unknown element', f'{", ".join(dummies)} not in the periodic table')
    return (
        np.asarray(structure.atomic_numbers),
        structure.cart_coords,
        structure.lattice.matrix,
        np.asarray(structure.lattice.pbc),
    )


class StructureBuilder:
    """Validated structures in, :class:`StructureArrays` out; every refused one becomes a :class:`SkippedRow`.

    The rules, the same for every door: :func:`validate_atoms` must pass; ids are unique (a structure
    whose id is already taken is skipped as ``duplicate id``, naming the id); every structure carries
    the labels ``label_names`` (default: those of the first structure kept), and with
    ``require_labels`` a structure whose label is missing or NaN is skipped as ``missing label``.
    """

    def __init__(self, label_names: Sequence[str] | None = None, require_labels: bool = True):
        self.label_names = list(label_names) if label_names is not None else None
        self.require_labels = require_labels
        self.skipped: list[SkippedRow] = []
        self._numbers, self._positions, self._cells, self._pbc, self._ids = [], [], [], [], []
        self._labels: dict[str, list[float]] = collections.defaultdict(list)
        self._seen: set[str] = set()

    def __len__(self) -> int:
        return len(self._ids)

    def skip(self, identifier, reason: str, detail: str = '') -> None:
        self.skipped.append(SkippedRow(str(identifier), reason, detail))

    def accepts(self, identifier, labels: dict | None = None) -> bool:
        """Whether id and labels pass (recording why not), checked before a structure is parsed at all."""
        identifier = str(identifier)
        if identifier in self._seen:
            self.skip(identifier, 'duplicate id', f'id {identifier!r} is already taken by an earlier structure')
            return False
        if self.require_labels:
            names = self.label_names if self.label_names is not None else sorted(labels or {})
            missing = [name for name in names if not math.isfinite((labels or {}).get(name, math.nan))]
            if missing:
                self.skip(identifier, 'missing label', ', '.join(missing))
                return False
        return True

    def add(self, identifier, numbers, positions, cell, pbc=(True, True, True), labels: dict | None = None) -> bool:
        """Keep the structure if id, labels and atoms pass; otherwise record why not. Returns whether kept."""
        identifier = str(identifier)
        if not self.accepts(identifier, labels):
            return False
        try:
            numbers = np.asarray(numbers)
            if numbers.size and not np.issubdtype(numbers.dtype, np.integer):
                raise InvalidStructure('unknown element', f'atomic numbers of type {numbers.dtype}')
            numbers = numbers.astype(np.int64)
            positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
            cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
            if len(positions) != len(numbers):
                raise InvalidStructure('unparsable structure', f'{len(numbers)} atoms but {len(positions)} positions')
            validate_atoms(numbers, positions, cell)
        except InvalidStructure as exc:
            self.skip(identifier, exc.reason, exc.detail)
            return False
        except (TypeError, ValueError) as exc:  # arrays of the wrong shape or type
            self.skip(identifier, 'unparsable structure', str(exc)[:200])
            return False
        labels = labels or {}
        if self.label_names is None:
            self.label_names = sorted(labels)
        self._seen.add(identifier)
        self._ids.append(identifier)
        self._numbers.append(numbers)
        self._positions.append(positions)
        self._cells.append(cell)
        self._pbc.append(np.asarray(pbc, dtype=bool).reshape(3))
        for name in self.label_names:
            self._labels[name].append(float(labels.get(name, math.nan)))
        return True

    def arrays(self) -> StructureArrays:
        return StructureArrays(
            numbers=np.concatenate(self._numbers) if self._numbers else np.zeros(0, dtype=np.int16),
            positions=np.concatenate(self._positions) if self._positions else np.zeros((0, 3)),
            cells=np.stack(self._cells) if self._cells else np.zeros((0, 3, 3)),
            pbc=np.stack(self._pbc) if self._pbc else np.zeros((0, 3), dtype=bool),
            offsets=np.concatenate([[0], np.cumsum([len(z) for z in self._numbers], dtype=np.int64)]),
            ids=self._ids,
            labels={name: np.asarray(self._labels[name], dtype=np.float64) for name in self.label_names or []},
        )


def from_pymatgen(
    structures: Iterable,
    ids: Sequence[str] | None = None,
    labels: dict[str, Sequence[float]] | None = None,
    skipped: list[SkippedRow] | None = None,
) -> StructureArrays:
    """Build a set from pymatgen ``Structure`` (or ASE ``Atoms``) objects, validating each one.

    Labels may hold NaN (unknown). With a ``skipped`` list, a structure that fails validation is
    left out and recorded there; without one, the first failure raises :class:`InvalidStructure`
    naming the structure.
    """
    structures = list(structures)
    if ids is None:
        ids = [str(i) for i in range(len(structures))]
    if len(ids) != len(structures):
        raise ValueError('ids and structures differ in length')
    labels = {name: list(values) for name, values in (labels or {}).items()}
    for name, values in labels.items():
        if len(values) != len(structures):
            raise ValueError(f'label {name!r} has {len(values)} values for {len(structures)} structures')
    builder = StructureBuilder(label_names=list(labels), require_labels=False)
    for index, (identifier, structure) in enumerate(zip(ids, structures)):
        try:
            numbers, positions, cell, pbc = atoms_from_object(structure)
        except InvalidStructure as exc:
            builder.skip(identifier, exc.reason, exc.detail)
            continue
        builder.add(identifier, numbers, positions, cell, pbc, {name: labels[name][index] for name in labels})
    if builder.skipped and skipped is None:
        first = builder.skipped[0]
        raise InvalidStructure(first.reason, f'structure {first.id!r}: {first.detail}')
    if skipped is not None:
        skipped.extend(builder.skipped)
    return builder.arrays()


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
