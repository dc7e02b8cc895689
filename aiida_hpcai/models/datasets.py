"""Structure dataset loaders (no AiiDA import) and deterministic id-based splits.

Formats (``fmt='auto'`` picks by name):

- ``csv``: the CDVAE / MP-20 CSV (``material_id``, ``cif``, numeric property columns), plain or
  gzipped, which also covers ``../shared/data/mp_cgcnn/mp_cgcnn.csv.gz``;
- ``matbench``: matbench ``*.json.gz`` (pandas "split" orient: ``index``, ``columns``, ``data``
  with pymatgen structure dicts);
- ``extxyz``: extended XYZ, numeric ``info`` keys become labels, ``info['id']`` the id;
- ``cif-folder``: a folder of ``*.cif`` files (id = file stem) with optional CGCNN-style
  ``id_prop.csv`` (``id,value``) labels;
- ``npz``: our own structure-set file (:mod:`aiida_hpcai.models.structure_io`).

Every row that cannot become a valid structure is skipped with a reason (:data:`SKIP_REASONS`)
and counted; nothing is dropped silently.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import gzip
import hashlib
import io
import json
import math
import os
import pathlib
import re
import sys
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from .structure_io import StructureArrays, read_npz, write_npz

SKIP_REASONS = (
    'unparsable structure',
    'unknown element',
    'partial occupancy',
    'non-finite values',
    'collapsed cell',
    'overlapping atoms',
    'missing label',
)
MIN_VOLUME_PER_ATOM = 1.0  # Angstrom^3; real solids have 5-100, below 1 the cell has collapsed
MIN_DISTANCE = 0.5  # Angstrom; the shortest real bond (H2) is 0.74
_NON_LABEL_COLUMNS = {'', 'material_id', 'cif', 'formula', 'natoms', 'pretty_formula', 'elements', 'spacegroup.number'}
_FORMATS = ('csv', 'matbench', 'extxyz', 'cif-folder', 'npz')


@dataclasses.dataclass(frozen=True)
class SkippedRow:
    id: str
    reason: str
    detail: str = ''


@dataclasses.dataclass
class Dataset:
    """Structures that passed validation, as arrays, plus every refused row and why."""

    arrays: StructureArrays
    skipped: list[SkippedRow]
    source: str
    format: str

    @property
    def skip_counts(self) -> dict[str, int]:
        return dict(collections.Counter(row.reason for row in self.skipped))

    def summary(self) -> str:
        lines = [f'{self.source} ({self.format}): {len(self.arrays)} structures loaded, {len(self.skipped)} skipped']
        lines += [f'  skipped, {reason}: {count}' for reason, count in sorted(self.skip_counts.items())]
        return '\n'.join(lines)


class InvalidStructure(ValueError):
    def __init__(self, reason: str, detail: str = ''):
        super().__init__(f'{reason}: {detail}' if detail else reason)
        self.reason = reason
        self.detail = detail


# -- validation --------------------------------------------------------------------------------
def validate_atoms(numbers: np.ndarray, positions: np.ndarray, cell: np.ndarray) -> None:
    """Raise :class:`InvalidStructure` if the atoms cannot be a physical periodic crystal."""
    if len(numbers) == 0:
        raise InvalidStructure('unparsable structure', 'no atoms')
    if not (np.all(np.isfinite(positions)) and np.all(np.isfinite(cell))):
        raise InvalidStructure('non-finite values', 'NaN or infinite coordinates or lattice')
    if np.any(numbers < 1) or np.any(numbers > 118):
        raise InvalidStructure('unknown element', f'atomic numbers {sorted(set(numbers.tolist()))}')
    volume = abs(float(np.linalg.det(cell)))
    if volume / len(numbers) < MIN_VOLUME_PER_ATOM:
        raise InvalidStructure('collapsed cell', f'{volume / len(numbers):.3g} A^3 per atom')
    shortest = _shortest_periodic_distance(positions, cell)
    if shortest < MIN_DISTANCE:
        raise InvalidStructure('overlapping atoms', f'two atoms {shortest:.3f} A apart')


def _shortest_periodic_distance(positions: np.ndarray, cell: np.ndarray) -> float:
    """Shortest distance between two atoms, or between an atom and its own periodic image."""
    frac = np.linalg.solve(cell.T, positions.T).T
    delta = frac[:, None, :] - frac[None, :, :]
    delta -= np.round(delta)
    shifts = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], dtype=float)
    vectors = (delta[:, :, None, :] + shifts[None, None, :, :]) @ cell
    distances = np.linalg.norm(vectors, axis=-1)
    n = len(positions)
    distances[np.arange(n), np.arange(n), 13] = np.inf  # shift index 13 is (0, 0, 0): an atom and itself
    return float(distances.min())


# -- CIF parsing --------------------------------------------------------------------------------
_P1_MARKERS = ("_symmetry_space_group_name_H-M   'P 1'", "_space_group_name_H-M_alt   'P 1'")
_CELL_RE = {
    key: re.compile(rf'^_cell_{key}\s+([-+0-9.eE()]+)', re.M)
    for key in ('length_a', 'length_b', 'length_c', 'angle_alpha', 'angle_beta', 'angle_gamma')
}


def parse_cif(text: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(numbers, cartesian positions, cell)`` of a single-structure CIF.

    P1 CIFs as pymatgen writes them (every MP/CDVAE dataset here) go through a direct reader,
    30x faster than pymatgen's general parser, which handles everything else.
    """
    if any(marker in text for marker in _P1_MARKERS) and text.count("'x, y, z'") == 1 and 'loop_' in text:
        try:
            return _parse_p1_cif(text)
        except InvalidStructure:
            raise
        except Exception:  # noqa: BLE001 - an unusual layout: let pymatgen try
            pass
    return _parse_cif_pymatgen(text)


def _parse_p1_cif(text: str):
    from pymatgen.core import Lattice

    params = [float(_CELL_RE[key].search(text).group(1).split('(')[0]) for key in _CELL_RE]
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith('_atom_site_type_symbol'))
    columns, row_lines = [], []
    for line in lines[start:]:
        stripped = line.strip()
        if stripped.startswith('_atom_site'):
            columns.append(stripped)
        elif stripped and not stripped.startswith(('loop_', '_', '#')):
            row_lines.append(stripped.split())
        elif row_lines:
            break
    index = {name: i for i, name in enumerate(columns)}
    symbols = [row[index['_atom_site_type_symbol']] for row in row_lines]
    frac = np.array([[float(row[index[f'_atom_site_fract_{axis}']]) for axis in 'xyz'] for row in row_lines])
    if '_atom_site_occupancy' in index:
        occupancy = np.array([float(row[index['_atom_site_occupancy']]) for row in row_lines])
        if np.any(np.abs(occupancy - 1.0) > 1e-6):
            raise InvalidStructure('partial occupancy', 'site occupancies below 1')
    numbers = np.array([_atomic_number(symbol) for symbol in symbols], dtype=np.int64)
    cell = Lattice.from_parameters(*params).matrix
    return numbers, frac @ cell, cell


def _parse_cif_pymatgen(text: str):
    import warnings

    from pymatgen.io.cif import CifParser

    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            structures = CifParser(io.StringIO(text)).parse_structures(primitive=False)
    except Exception as exc:  # noqa: BLE001 - pymatgen raises many types for bad CIFs
        message = str(exc)
        if 'element' in message.lower() or 'species' in message.lower():
            raise InvalidStructure('unknown element', message[:200]) from exc
        raise InvalidStructure('unparsable structure', message[:200] or type(exc).__name__) from exc
    if not structures:
        raise InvalidStructure('unparsable structure', 'no structure in CIF')
    return _atoms_from_pymatgen(structures[0])


def _atoms_from_pymatgen(structure):
    if not structure.is_ordered:
        raise InvalidStructure('partial occupancy', str(structure.composition))
    return np.array(structure.atomic_numbers), structure.cart_coords, structure.lattice.matrix


def _atomic_number(symbol: str) -> int:
    from pymatgen.core.periodic_table import Element

    clean = re.sub(r'[^A-Za-z]', '', symbol)  # labels such as 'Fe2+' or 'O1'
    for candidate in (clean, clean[:2], clean[:1]):
        if candidate and Element.is_valid_symbol(candidate):
            return Element(candidate).Z
    raise InvalidStructure('unknown element', f'{symbol!r}')


# -- readers: each yields (id, callable returning atoms, labels dict) ---------------------------
RawRow = tuple[str, object, dict]


def _open_text(path: pathlib.Path):
    if path.suffix == '.gz':
        return io.TextIOWrapper(gzip.open(path, 'rb'), encoding='utf-8')
    return open(path, encoding='utf-8', newline='')


def _label_value(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _read_csv(path: pathlib.Path) -> Iterator[RawRow]:
    csv.field_size_limit(sys.maxsize)
    with _open_text(path) as handle:
        reader = csv.DictReader(handle)
        if 'cif' not in (reader.fieldnames or []):
            raise ValueError(f'{path}: a structure CSV needs a "cif" column, found {reader.fieldnames}')
        label_columns = [
            name for name in reader.fieldnames if name not in _NON_LABEL_COLUMNS and not name.startswith('Unnamed')
        ]
        for number, row in enumerate(reader):
            row_id = row.get('material_id') or str(number)
            labels = {name: _label_value(row[name]) for name in label_columns}
            yield row_id, (lambda text=row['cif']: parse_cif(text)), labels


def _read_matbench(path: pathlib.Path) -> Iterator[RawRow]:
    from pymatgen.core import Structure

    with _open_text(path) as handle:
        payload = json.load(handle)
    columns = payload['columns']
    structure_column = columns.index('structure')
    for row_id, values in zip(payload['index'], payload['data']):
        labels = {
            name: _label_value(value) for i, (name, value) in enumerate(zip(columns, values)) if i != structure_column
        }

        def atoms(entry=values[structure_column]):
            try:
                structure = Structure.from_dict(entry)
            except Exception as exc:  # noqa: BLE001
                raise InvalidStructure('unparsable structure', str(exc)[:200]) from exc
            return _atoms_from_pymatgen(structure)

        yield str(row_id), atoms, labels


def _read_extxyz(path: pathlib.Path) -> Iterator[RawRow]:
    from ase.io import iread

    for number, atoms in enumerate(iread(str(path), index=':', format='extxyz')):
        row_id = str(atoms.info.get('id', atoms.info.get('material_id', number)))
        # ASE moves keys it knows (energy, free_energy, ...) from the comment line into a calculator.
        values = {**(atoms.calc.results if atoms.calc is not None else {}), **atoms.info}
        labels = {
            key: float(value)
            for key, value in values.items()
            if key not in ('id', 'material_id')
            and isinstance(value, (int, float, np.floating, np.integer))
            and not isinstance(value, bool)
        }
        yield row_id, (lambda a=atoms: (a.get_atomic_numbers(), a.get_positions(), np.asarray(a.get_cell()))), labels


def _read_cif_folder(path: pathlib.Path) -> Iterator[RawRow]:
    labels_by_id: dict[str, dict] = {}
    id_prop = path / 'id_prop.csv'
    if id_prop.exists():
        with open(id_prop, encoding='utf-8') as handle:
            for row in csv.reader(handle):
                if row:
                    labels_by_id[row[0]] = {
                        f'property_{i}' if i else 'target': _label_value(v) for i, v in enumerate(row[1:])
                    }
    for cif in sorted(path.glob('*.cif')):
        yield cif.stem, (lambda f=cif: parse_cif(f.read_text(errors='replace'))), labels_by_id.get(cif.stem, {})


def detect_format(path: pathlib.Path) -> str:
    name = path.name.lower()
    if path.is_dir():
        return 'cif-folder'
    if name.endswith('.npz'):
        return 'npz'
    if name.endswith(('.json.gz', '.json')):
        return 'matbench'
    if name.endswith(('.xyz', '.extxyz')):
        return 'extxyz'
    if name.endswith(('.csv', '.csv.gz')):
        return 'csv'
    raise ValueError(f'cannot tell the format of {path}; pass one of {_FORMATS}')


_READERS = {'csv': _read_csv, 'matbench': _read_matbench, 'extxyz': _read_extxyz, 'cif-folder': _read_cif_folder}


def load_dataset(
    path: str | os.PathLike,
    fmt: str = 'auto',
    limit: int | None = None,
    targets: Sequence[str] | None = None,
    cache: bool = False,
    progress: bool = False,
) -> Dataset:
    """Load a structure dataset, validating every row.

    :param limit: read at most this many rows (accepted or skipped) from the start of the file.
    :param targets: labels to keep; a row whose target is missing/NaN is skipped
        ('missing label'). Default: every numeric label column of the file, each required.
    :param cache: keep the parsed result under ``$HPCAI_CACHE_DIR`` (default
        ``~/.cache/aiida-hpcai``), keyed by the file's path, size, mtime and these arguments.
    :param progress: show a progress bar (tqdm) while parsing.
    """
    path = pathlib.Path(path)
    fmt = detect_format(path) if fmt == 'auto' else fmt
    if fmt not in _FORMATS:
        raise ValueError(f'unknown format {fmt!r}; known: {_FORMATS}')
    cache_file = _cache_file(path, fmt, limit, targets) if cache else None
    if cache_file is not None and cache_file.exists():
        return _read_cache(cache_file, path, fmt)
    if fmt == 'npz':
        arrays = read_npz(path)
        dataset = Dataset(_select_labels(arrays, targets), [], str(path), fmt)
    else:
        dataset = _load_rows(_READERS[fmt](path), limit, targets, str(path), fmt, progress)
    if cache_file is not None:
        _write_cache(cache_file, dataset)
    return dataset


def _select_labels(arrays: StructureArrays, targets: Sequence[str] | None) -> StructureArrays:
    if targets is None:
        return arrays
    missing = [t for t in targets if t not in arrays.labels]
    if missing:
        raise ValueError(f'labels {missing} not in the set; it has {sorted(arrays.labels)}')
    arrays.labels = {t: arrays.labels[t] for t in targets}
    return arrays


def _load_rows(rows: Iterable[RawRow], limit, targets, source, fmt, progress) -> Dataset:
    numbers, positions, cells, ids, natoms = [], [], [], [], []
    label_values: dict[str, list[float]] = collections.defaultdict(list)
    skipped: list[SkippedRow] = []
    wanted = list(targets) if targets is not None else None
    if progress:
        from tqdm import tqdm

        rows = tqdm(rows, desc=f'reading {pathlib.Path(source).name}', unit=' rows', total=limit)
    for count, (row_id, make_atoms, labels) in enumerate(rows):
        if limit is not None and count >= limit:
            break
        names = wanted if wanted is not None else sorted(labels)
        missing = [name for name in names if not math.isfinite(labels.get(name, math.nan))]
        if missing:
            skipped.append(SkippedRow(row_id, 'missing label', ', '.join(missing)))
            continue
        try:
            z, xyz, cell = make_atoms()
            z = np.asarray(z, dtype=np.int64)
            xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
            cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
            validate_atoms(z, xyz, cell)
        except InvalidStructure as exc:
            skipped.append(SkippedRow(row_id, exc.reason, exc.detail))
            continue
        numbers.append(z)
        positions.append(xyz)
        cells.append(cell)
        natoms.append(len(z))
        ids.append(row_id)
        for name in names:
            label_values[name].append(labels[name])
        if wanted is None and len(label_values) != len(names):
            raise ValueError(f'{source}: rows carry different label columns')
    arrays = StructureArrays(
        numbers=np.concatenate(numbers) if numbers else np.zeros(0),
        positions=np.concatenate(positions) if positions else np.zeros((0, 3)),
        cells=np.stack(cells) if cells else np.zeros((0, 3, 3)),
        pbc=np.ones((len(cells), 3), dtype=bool),
        offsets=np.concatenate([[0], np.cumsum(natoms, dtype=np.int64)]),
        ids=ids,
        labels={name: np.asarray(values) for name, values in label_values.items()},
    )
    return Dataset(arrays, skipped, source, fmt)


def _cache_file(path: pathlib.Path, fmt, limit, targets) -> pathlib.Path:
    stat = path.stat()
    key = json.dumps(
        [
            str(path.resolve()),
            stat.st_size,
            stat.st_mtime_ns,
            fmt,
            limit,
            list(targets) if targets is not None else None,
            'v1',
        ]
    )
    root = pathlib.Path(os.environ.get('HPCAI_CACHE_DIR', pathlib.Path.home() / '.cache' / 'aiida-hpcai'))
    return root / f'{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz'


def _write_cache(cache_file: pathlib.Path, dataset: Dataset) -> None:
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    write_npz(dataset.arrays, cache_file)
    cache_file.with_suffix('.skipped.json').write_text(json.dumps([dataclasses.asdict(r) for r in dataset.skipped]))


def _read_cache(cache_file: pathlib.Path, path: pathlib.Path, fmt: str) -> Dataset:
    skipped = [SkippedRow(**row) for row in json.loads(cache_file.with_suffix('.skipped.json').read_text())]
    return Dataset(read_npz(cache_file), skipped, str(path), fmt)


def write_extxyz(arrays: StructureArrays, path: str | os.PathLike) -> None:
    """Write a set as extended XYZ with ids and labels in each frame's ``info``."""
    import ase
    from ase.io import write

    frames = []
    for index in range(len(arrays)):
        z, xyz, cell, pbc = arrays.atoms_of(index)
        atoms = ase.Atoms(numbers=z, positions=xyz, cell=cell, pbc=pbc)
        atoms.info['id'] = str(arrays.ids[index])
        for name, values in arrays.labels.items():
            atoms.info[name] = float(values[index])
        frames.append(atoms)
    write(str(path), frames, format='extxyz')


# -- splits -------------------------------------------------------------------------------------
SPLIT_NAMES = ('train', 'val', 'test')


def split_by_id(
    ids: Sequence[str], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, list[str]]:
    """Deterministic split of unique ids: sorted, permuted by ``seed``, cut by ``fractions``.

    The same ids, fractions and seed give the same split on every machine and numpy version
    (numpy's PCG64 ``permutation`` stream is stable).
    """
    if len(fractions) != len(SPLIT_NAMES) or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f'fractions must be three numbers summing to 1, got {fractions}')
    unique = sorted(set(map(str, ids)))
    order = np.random.default_rng(seed).permutation(len(unique))
    n_train = int(round(fractions[0] * len(unique)))
    n_val = int(round(fractions[1] * len(unique)))
    shuffled = [unique[i] for i in order]
    return {
        'train': shuffled[:n_train],
        'val': shuffled[n_train : n_train + n_val],
        'test': shuffled[n_train + n_val :],
    }


def write_split(folder: str | os.PathLike, split: dict[str, Sequence[str]]) -> None:
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in SPLIT_NAMES:
        (folder / f'{name}.txt').write_text(''.join(f'{i}\n' for i in split[name]))


def read_split(folder: str | os.PathLike) -> dict[str, list[str]]:
    folder = pathlib.Path(folder)
    return {name: (folder / f'{name}.txt').read_text().split() for name in SPLIT_NAMES}


def split_indices(ids: Sequence[str], split: dict[str, Sequence[str]]) -> dict[str, np.ndarray]:
    """Positions of each split's ids in ``ids`` (ids absent from ``ids`` are ignored)."""
    position = {str(i): n for n, i in enumerate(ids)}
    return {
        name: np.array([position[i] for i in members if i in position], dtype=np.int64)
        for name, members in split.items()
    }


def default_data_dir() -> pathlib.Path | None:
    """``$HPCAI_DATA_DIR``, else ``../shared/data`` beside the working directory or the checkout."""
    if 'HPCAI_DATA_DIR' in os.environ:
        return pathlib.Path(os.environ['HPCAI_DATA_DIR'])
    candidates = [
        pathlib.Path.cwd().parent / 'shared' / 'data',
        pathlib.Path(__file__).resolve().parents[3] / 'shared' / 'data',
    ]
    return next((c for c in candidates if c.is_dir()), None)
