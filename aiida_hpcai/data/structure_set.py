"""``hpcai.structures``: many crystal structures in ONE node.

One AiiDA node per structure costs a database row, a repository entry and about 0.1 s per
process; a dataset of 30,000 structures or a batch of generated candidates travels instead as a
single npz file (see :mod:`aiida_hpcai.models.structure_io`) in this node's repository.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from aiida import orm

from aiida_hpcai.models import structure_io
from aiida_hpcai.models.contract import STRUCTURES_FILE

__all__ = ('StructureSet',)


class StructureSet(orm.Data):
    """A set of periodic structures with optional per-structure ids and float labels.

    Attributes (queryable): ``count``, ``natoms_total``, ``elements``, ``formulae_digest``,
    ``label_names``, ``format_version`` and, where structures were refused on the way in,
    ``skipped_count`` and ``skipped_reasons`` (reason -> count; the full list, one entry per
    refused structure with its id, reason and the parser's detail, is the repository file
    ``skipped.json``).

    The ``from_*`` constructors validate every structure (:mod:`aiida_hpcai.models.structure_io`:
    known elements, finite numbers, a cell that has not collapsed, no overlapping atoms, unique
    ids): a bad one is left out and recorded, the rest go on. The plain constructor takes arrays
    as they are (the model program's own output, a subset of a validated set). A node without a
    label gets the count and the first formulae as one, so that ``verdi node graph`` says what it holds.
    """

    FILENAME = STRUCTURES_FILE
    SKIPPED_FILENAME = 'skipped.json'

    def __init__(
        self, arrays: structure_io.StructureArrays | None = None, skipped: Sequence[dict] | None = None, **kwargs
    ):
        super().__init__(**kwargs)
        if arrays is not None:
            self._set_arrays(arrays)
            if not self.label:
                self.label = self.summary()
        if skipped:
            self._set_skipped(skipped)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_pymatgen(
        cls,
        structures: Iterable,
        ids: Sequence[str] | None = None,
        labels: dict[str, Sequence[float]] | None = None,
        **kwargs,
    ) -> StructureSet:
        """From pymatgen ``Structure`` or ASE ``Atoms`` objects; invalid ones are recorded in ``skipped.json``."""
        skipped: list[structure_io.SkippedRow] = []
        arrays = structure_io.from_pymatgen(structures, ids=ids, labels=labels, skipped=skipped)
        return cls(arrays, skipped=[*kwargs.pop('skipped', []), *map(_as_dict, skipped)], **kwargs)

    from_ase = from_pymatgen

    @classmethod
    def from_structuredata(
        cls,
        nodes: Sequence[orm.StructureData],
        ids: Sequence[str] | None = None,
        labels: dict[str, Sequence[float]] | None = None,
        **kwargs,
    ) -> StructureSet:
        """From ``StructureData`` nodes; ids default to the nodes' UUIDs."""
        nodes = list(nodes)
        if ids is None:
            ids = [node.uuid for node in nodes]
        return cls.from_pymatgen([node.get_ase() for node in nodes], ids=ids, labels=labels, **kwargs)

    @classmethod
    def from_file(cls, path, fmt: str = 'auto', **loader_kwargs) -> StructureSet:
        """From any dataset file or folder :func:`aiida_hpcai.models.datasets.load_dataset` reads.

        Rows the loader refuses are kept in the node as ``skipped.json`` with their reasons.
        """
        from aiida_hpcai.models.datasets import load_dataset

        return cls._from_dataset(load_dataset(path, fmt=fmt, **loader_kwargs))

    @classmethod
    def from_files(cls, paths: Sequence) -> StructureSet:
        """From CIF, POSCAR/CONTCAR (anything pymatgen reads) and extxyz files, as users hand them to ``predict``.

        See :func:`aiida_hpcai.models.datasets.read_structure_files` for ids and labels; a file or frame
        that cannot be read or fails validation is recorded in ``skipped.json``, the others go on.
        """
        from aiida_hpcai.models.datasets import read_structure_files

        return cls._from_dataset(read_structure_files(paths))

    @classmethod
    def _from_dataset(cls, dataset) -> StructureSet:
        return cls(dataset.arrays, skipped=[_as_dict(row) for row in dataset.skipped])

    def _set_arrays(self, arrays: structure_io.StructureArrays) -> None:
        buffer = io.BytesIO()
        structure_io.write_npz(arrays, buffer)
        buffer.seek(0)
        self.base.repository.put_object_from_filelike(buffer, self.FILENAME)
        self.base.attributes.set_many(
            {
                'format_version': structure_io.FORMAT_VERSION,
                'count': len(arrays),
                'natoms_total': int(arrays.natoms.sum()),
                'elements': arrays.elements(),
                'formulae_digest': arrays.formulae_digest(),
                'label_names': sorted(arrays.labels),
                'skipped_count': 0,
                'skipped_reasons': {},
            }
        )
        self._cached_arrays = arrays

    def _set_skipped(self, skipped: Sequence[dict]) -> None:
        reasons: dict[str, int] = {}
        for row in skipped:
            reasons[row['reason']] = reasons.get(row['reason'], 0) + 1
        self.base.repository.put_object_from_filelike(
            io.BytesIO(json.dumps(list(skipped)).encode()), self.SKIPPED_FILENAME
        )
        self.base.attributes.set('skipped_count', len(skipped))
        self.base.attributes.set('skipped_reasons', reasons)

    # -- access -------------------------------------------------------------------------------
    @property
    def arrays(self) -> structure_io.StructureArrays:
        """The structures as numpy arrays (read once from the repository, then cached)."""
        cached = getattr(self, '_cached_arrays', None)
        if cached is None:
            with self.base.repository.open(self.FILENAME, mode='rb') as handle:
                cached = structure_io.read_npz(io.BytesIO(handle.read()))
            self._cached_arrays = cached
        return cached

    @property
    def count(self) -> int:
        return self.base.attributes.get('count')

    @property
    def elements(self) -> list[str]:
        return self.base.attributes.get('elements')

    @property
    def label_names(self) -> list[str]:
        return self.base.attributes.get('label_names')

    @property
    def ids(self) -> list[str]:
        return self.arrays.ids.tolist()

    @property
    def labels(self) -> dict[str, np.ndarray]:
        return self.arrays.labels

    def get_label(self, name: str) -> np.ndarray:
        try:
            return self.arrays.labels[name]
        except KeyError as exc:
            raise KeyError(f'no label {name!r}; this set has {self.label_names}') from exc

    def get_skipped(self) -> list[dict]:
        """The structures refused when this set was built, each ``{'id': ..., 'reason': ..., 'detail': ...}``."""
        if self.SKIPPED_FILENAME not in self.base.repository.list_object_names():
            return []
        return json.loads(self.base.repository.get_object_content(self.SKIPPED_FILENAME))

    def summary(self, formulae: int = 3, scanned: int = 100) -> str:
        """``'3 structures: NaCl, BaTiO3, Si'``: the count and the first distinct reduced formulae."""
        from pymatgen.core import Composition

        count = self.count
        seen = self.arrays.subset(range(min(count, scanned))).formulae()
        distinct = list(dict.fromkeys(Composition(f).reduced_formula for f in seen))
        more = ', ...' if len(distinct) > formulae or count > scanned else ''
        shown = ', '.join(distinct[:formulae])
        return f'{count} structure{"" if count == 1 else "s"}' + (f': {shown}{more}' if shown else '')

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator:
        """Iterate as pymatgen ``Structure`` objects, in stored order."""
        return self.arrays.iter_pymatgen()

    def get_pymatgen(self, index: int):
        return self.arrays.to_pymatgen(index)

    def get_structuredata(self, index: int) -> orm.StructureData:
        """Structure ``index`` as an (unstored) ``StructureData``, e.g. to hand to a DFT code."""
        numbers, positions, cell, pbc = self.arrays.atoms_of(index)
        import ase

        atoms = ase.Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)
        return orm.StructureData(ase=atoms)

    def subset(self, indices: Sequence[int]) -> StructureSet:
        """A new (unstored) set with the structures at ``indices``, labels and ids carried along."""
        return StructureSet(self.arrays.subset(indices))

    def write(self, path) -> None:
        """Write the set as npz (``.npz``) or, for other suffixes, any format ASE writes (extxyz)."""
        path = str(path)
        if path.endswith('.npz'):
            structure_io.write_npz(self.arrays, path)
            return
        from aiida_hpcai.models.datasets import write_extxyz

        write_extxyz(self.arrays, path)


def _as_dict(row) -> dict:
    """A skipped row as stored in ``skipped.json``: ``{'id', 'reason', 'detail'}``."""
    return row if isinstance(row, dict) else {'id': row.id, 'reason': row.reason, 'detail': row.detail}
