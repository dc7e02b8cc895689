"""Structure dataset loaders (no AiiDA import) and deterministic id-based splits.

Formats (``fmt='auto'`` picks by name):

- ``csv``: the CDVAE / MP-20 CSV (``material_id``, ``cif``, numeric property columns), plain or
  gzipped, which also covers ``../shared/data/mp_cgcnn/mp_cgcnn.csv.gz``;
- ``matbench``: matbench ``*.json.gz`` (pandas "split" orient: ``index``, ``columns``, ``data``
  with pymatgen structure dicts);
- ``extxyz``: extended XYZ, numeric ``info`` keys become labels, ``info['id']`` the id;
- ``cif-folder``: a folder of ``*.cif`` files (id = file stem) with optional CGCNN-style
  ``id_prop.csv`` (``id,value``) labels;
- ``cif``: one CIF file (a structure per data block, id = file name, ``name#i`` for several);
- ``npz``: our own structure-set file (:mod:`aiida_hpcai.models.structure_io`).

:func:`read_structure_files` reads the files users hand to ``aiida-hpcai predict`` (CIF, POSCAR,
anything pymatgen reads, extxyz).

Every row, frame or file that cannot become a valid structure is skipped with a reason
(:data:`~aiida_hpcai.models.structure_io.SKIP_REASONS`), its id and the parser's message, by the
same :class:`~aiida_hpcai.models.structure_io.StructureBuilder` every other door uses; the rest go
on. A file that ends early (a truncated ``.csv.gz``) keeps the rows read before the damage and
records where reading stopped.
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
import zlib
from collections.abc import Collection, Iterable, Iterator, Sequence

import numpy as np

from .structure_io import (
    InvalidStructure,
    SkippedRow,
    StructureArrays,
    StructureBuilder,
    atoms_from_object,
    read_npz,
    write_npz,
)

_NON_LABEL_COLUMNS = {'', 'material_id', 'cif', 'formula', 'natoms', 'pretty_formula', 'elements', 'spacegroup.number'}
_FORMATS = ('csv', 'matbench', 'extxyz', 'cif-folder', 'cif', 'npz')
EXTXYZ_SUFFIXES = ('.extxyz', '.xyz')
# What a damaged or truncated file raises while it is being read (gzip, zlib, csv, text decoding, JSON).
_READ_ERRORS = (EOFError, OSError, zlib.error, csv.Error, UnicodeDecodeError, json.JSONDecodeError)


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
    structures = parse_cif_structures(text)
    return atoms_from_object(structures[0])[:3]


def parse_cif_structures(text: str) -> list:
    """Every structure of a CIF (one per data block) as pymatgen ``Structure``s, with pymatgen's parser.

    Raises :class:`InvalidStructure` with a reason a user can act on: pymatgen's own messages for a
    damaged file (``integer modulo by zero``, a bare ``'_atom_site_label'``) say little.
    """
    import warnings

    from pymatgen.io.cif import CifParser

    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            structures = CifParser(io.StringIO(text)).parse_structures(primitive=False)
    except Exception as exc:  # noqa: BLE001 - pymatgen raises many types for bad CIFs
        message = str(exc) or type(exc).__name__
        problem = _cif_problem(text)
        if problem:
            raise InvalidStructure('unparsable structure', problem) from exc  # pymatgen's message says less
        if 'element' in message.lower() or 'species' in message.lower():
            raise InvalidStructure('unknown element', message[:200]) from exc
        raise InvalidStructure('unparsable structure', message[:200]) from exc
    if not structures:
        raise InvalidStructure('unparsable structure', _cif_problem(text) or 'no structure in the CIF')
    return structures


def _cif_problem(text: str) -> str:
    """What is visibly wrong with a CIF ('' when nothing is): empty, no cell, no atoms, a cut-off atom loop."""
    if not text.strip():
        return 'the file is empty'
    if '_cell_length_a' not in text:
        return 'no cell (_cell_length_a) in the file: not a CIF, or cut off before the cell'
    if '_atom_site_fract_x' not in text and '_atom_site_Cartn_x' not in text:
        return 'no atom positions (_atom_site_fract_x) in the file: cut off before the atoms?'
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if '_atom_site_fract_x' in line or '_atom_site_Cartn_x' in line)
    while start > 0 and lines[start - 1].strip().startswith('_atom_site'):
        start -= 1
    columns, values = 0, 0
    for line in lines[start:]:
        stripped = line.strip()
        if stripped.startswith('_atom_site'):
            columns += 1
        elif not stripped or stripped.startswith(('loop_', '_', '#', 'data_')):
            if values:
                break
        else:
            values += len(stripped.split())
    if columns and values % columns:
        return f'the atom loop has {values} values for {columns} columns: the file looks cut off or damaged'
    return ''


def _atomic_number(symbol: str) -> int:
    from pymatgen.core.periodic_table import Element

    clean = re.sub(r'[^A-Za-z]', '', symbol)  # labels such as 'Fe2+' or 'O1'
    for candidate in (clean, clean[:2], clean[:1]):
        if candidate and Element.is_valid_symbol(candidate):
            return Element(candidate).Z
    raise InvalidStructure('unknown element', f'{symbol!r}')


# -- readers: each yields (id, callable returning atoms, labels dict or None when unreadable) -----
RawRow = tuple[str, object, dict | None]


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
            return atoms_from_object(structure)[:3]

        yield str(row_id), atoms, labels


def _read_extxyz(path: pathlib.Path, name: str | None = None) -> Iterator[RawRow]:
    """One row per frame; a frame that cannot be read fails alone (ASE's reader would stop the whole file).

    Ids: the frame's ``id`` (or ``material_id``), else ``<name>#<frame index>``; ``name`` defaults to the file's.
    """
    name = name or path.name
    for index, frame in _extxyz_frames(path):
        if isinstance(frame, InvalidStructure):
            yield f'{name}#{index}', _raiser(frame), None
            return
        try:
            atoms = _parse_extxyz_frame(frame, index)
        except InvalidStructure as exc:
            match = re.search(r'(?:^|\s)(?:id|material_id)=("[^"]*"|\S+)', frame.split('\n', 2)[1])
            row_id = match.group(1).strip('"') if match else f'{name}#{index}'
            yield row_id, _raiser(exc), None
            continue
        row_id = str(atoms.info.get('id', atoms.info.get('material_id', f'{name}#{index}')))
        yield row_id, (lambda a=atoms: atoms_from_object(a)), _numeric_info(atoms)


def _raiser(exc: Exception):
    def fail():
        raise exc

    return fail


def _extxyz_frames(path: pathlib.Path) -> Iterator[tuple[int, str | InvalidStructure]]:
    """``(index, text of one frame)``; an unreadable atom count ends the file with an :class:`InvalidStructure`."""
    with _open_text(path) as handle:
        index = 0
        while True:
            line = handle.readline()
            if not line:
                return
            if not line.strip():
                continue
            try:
                natoms = int(line.split()[0])
                if natoms < 0 or len(line.split()) != 1:
                    raise ValueError
            except ValueError:
                yield (
                    index,
                    InvalidStructure(
                        'unparsable structure',
                        f'frame {index}: expected an atom count, found {line.strip()[:40]!r}; the rest of the file '
                        'cannot be split into frames',
                    ),
                )
                return
            lines = [line] + [handle.readline() for _ in range(natoms + 1)]
            if not lines[-1]:
                yield index, InvalidStructure('truncated file', f'frame {index}: the file ends inside the frame')
                return
            yield index, ''.join(lines)
            index += 1


def _parse_extxyz_frame(text: str, index: int):
    from ase.io import read

    try:
        return read(io.StringIO(text), format='extxyz')
    except KeyError as exc:  # ASE's symbol table: an unknown element symbol
        raise InvalidStructure('unknown element', f'frame {index}: {exc.args[0]!r} is not an element') from exc
    except Exception as exc:  # noqa: BLE001 - ASE raises many types for a damaged frame
        raise InvalidStructure(
            'unparsable structure', f'frame {index}: {str(exc)[:200] or type(exc).__name__}'
        ) from exc


def _numeric_info(atoms) -> dict[str, float]:
    # ASE moves keys it knows (energy, free_energy, ...) from the comment line into a calculator.
    values = {**(atoms.calc.results if atoms.calc is not None else {}), **atoms.info}
    return {
        key: float(value)
        for key, value in values.items()
        if key not in ('id', 'material_id')
        and isinstance(value, (int, float, np.floating, np.integer))
        and not isinstance(value, bool)
    }


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


def _read_cif_file(path: pathlib.Path, name: str | None = None) -> Iterator[RawRow]:
    """One row per data block of one CIF file: id the file name, ``name#i`` when it holds several."""
    name = name or path.name
    try:
        structures = parse_cif_structures(path.read_text(errors='replace'))
    except InvalidStructure as exc:
        yield name, _raiser(exc), None
        return
    for index, structure in enumerate(structures):
        row_id = name if len(structures) == 1 else f'{name}#{index}'
        yield row_id, (lambda s=structure: atoms_from_object(s)), {}


def _read_pymatgen_file(path: pathlib.Path, name: str) -> Iterator[RawRow]:
    """POSCAR, CONTCAR and anything else pymatgen's ``Structure.from_file`` reads: one row."""
    from pymatgen.core import Structure

    try:
        structure = Structure.from_file(path)
    except Exception as exc:  # noqa: BLE001 - pymatgen raises many types; this file fails, the others go on
        detail = f'pymatgen cannot read it ({type(exc).__name__}: {str(exc)[:150]})'
        yield name, _raiser(InvalidStructure('unparsable structure', detail)), None
        return
    yield name, (lambda: atoms_from_object(structure)), {}


def read_structure_files(paths: Sequence[str | os.PathLike]) -> Dataset:
    """Read CIF, POSCAR/CONTCAR (anything pymatgen reads) and extxyz files, each structure validated.

    Ids are the file names (the paths as given when two files share a name); a file holding several
    structures gives ``name#0``, ``name#1``, ... unless its frames carry an ``id`` (extxyz). Numeric
    extxyz ``info`` keys that every structure read has become labels. A file, frame or data block that
    cannot be read, or fails validation, is recorded in ``skipped`` with its id and reason; the others
    go on.
    """
    paths = [pathlib.Path(p) for p in paths]
    names = collections.Counter(p.name for p in paths)
    parsed = []
    for path in paths:
        name = path.name if names[path.name] == 1 else str(path)
        if path.suffix.lower() in EXTXYZ_SUFFIXES:
            reader = _read_extxyz(path, name)
        elif path.suffix.lower() == '.cif':
            reader = _read_cif_file(path, name)
        else:
            reader = _read_pymatgen_file(path, name)
        rows = []
        try:
            for row_id, make_atoms, labels in reader:
                try:
                    rows.append((row_id, make_atoms(), labels))
                except InvalidStructure as exc:
                    rows.append((row_id, exc, labels))
        except _READ_ERRORS as exc:
            rows.append((name, InvalidStructure('unparsable structure', f'cannot read the file: {exc}'), {}))
        if len(rows) == 1 and rows[0][0] == f'{name}#0':  # one frame: the file name alone is the id
            rows[0] = (name, *rows[0][1:])
        if not rows:
            rows.append((name, InvalidStructure('unparsable structure', 'the file holds no structure'), {}))
        parsed.extend(rows)
    good = [set(labels) for _, atoms, labels in parsed if not isinstance(atoms, InvalidStructure)]
    builder = StructureBuilder(sorted(set.intersection(*good)) if good else [], require_labels=False)
    for row_id, atoms, labels in parsed:
        if isinstance(atoms, InvalidStructure):
            builder.skip(row_id, atoms.reason, atoms.detail)
        else:
            builder.add(row_id, *atoms, labels=labels)
    return Dataset(builder.arrays(), builder.skipped, ', '.join(map(str, paths)), 'files')


def _read_npz_rows(path: pathlib.Path) -> Iterator[RawRow]:
    arrays = read_npz(path)
    for index, row_id in enumerate(arrays.ids.tolist()):
        labels = {name: float(values[index]) for name, values in arrays.labels.items()}
        yield row_id, (lambda i=index: arrays.atoms_of(i)), labels


def detect_format(path: pathlib.Path) -> str:
    name = path.name.lower()
    if path.is_dir():
        return 'cif-folder'
    if name.endswith('.npz'):
        return 'npz'
    if name.endswith(('.json.gz', '.json')):
        return 'matbench'
    if name.endswith(EXTXYZ_SUFFIXES):
        return 'extxyz'
    if name.endswith(('.csv', '.csv.gz')):
        return 'csv'
    if name.endswith('.cif'):
        return 'cif'
    raise ValueError(
        f'cannot tell the format of {path.name} from its name; pass --format, one of {", ".join(_FORMATS)}'
    )


_READERS = {
    'csv': _read_csv,
    'matbench': _read_matbench,
    'extxyz': _read_extxyz,
    'cif-folder': _read_cif_folder,
    'cif': _read_cif_file,
    'npz': _read_npz_rows,
}


def load_dataset(
    path: str | os.PathLike,
    fmt: str = 'auto',
    limit: int | None = None,
    targets: Sequence[str] | None = None,
    cache: bool = False,
    progress: bool = False,
    ids: Collection[str] | None = None,
) -> Dataset:
    """Load a structure dataset, validating every row.

    :param limit: read at most this many rows (accepted or skipped) from the start of the file
        (with ``ids``: of the selected rows).
    :param targets: labels to keep; a row whose target is missing/NaN is skipped
        ('missing label'); a target that no row has is an error naming the columns the file has.
        Default: every numeric label column of the file, each required (an npz keeps its NaN labels).
    :param cache: keep the parsed result under ``$HPCAI_CACHE_DIR`` (default
        ``~/.cache/aiida-hpcai``), keyed by the file's path, size, mtime and these arguments.
    :param progress: show a progress bar (tqdm) while parsing.
    :param ids: read only the rows with these ids.
    """
    path = pathlib.Path(path)
    fmt = detect_format(path) if fmt == 'auto' else fmt
    if fmt not in _FORMATS:
        raise ValueError(f'unknown format {fmt!r}; known: {", ".join(_FORMATS)}')
    if fmt == 'cif-folder' and not path.is_dir():
        raise ValueError(f'{path.name} is a file; the format cif-folder reads a folder of *.cif files')
    if fmt != 'cif-folder' and path.is_dir():
        raise ValueError(f'{path.name} is a folder; the format {fmt} reads a file')
    cache_file = _cache_file(path, fmt, limit, targets, ids) if cache else None
    if cache_file is not None and cache_file.exists():
        return _read_cache(cache_file, path, fmt)
    builder = StructureBuilder(targets, require_labels=not (fmt == 'npz' and targets is None))
    rows_read, columns = _load_rows(_READERS[fmt](path), builder, limit, ids, path.name, progress)
    missing = [name for name in targets or () if rows_read and name not in columns]
    if missing:
        raise ValueError(
            f'{path.name} has no label {", ".join(map(repr, missing))}; its labels: {sorted(columns) or "none"}'
        )
    dataset = Dataset(builder.arrays(), builder.skipped, str(path), fmt)
    if cache_file is not None:
        _write_cache(cache_file, dataset)
    return dataset


def _load_rows(rows: Iterable[RawRow], builder: StructureBuilder, limit, ids, name: str, progress):
    """Feed the rows to ``builder``; a file that breaks off keeps what was read and records where it stopped.

    Returns the number of rows read and the label names seen.
    """
    wanted = None if ids is None else {str(i) for i in ids}
    if progress:
        from tqdm import tqdm

        rows = tqdm(rows, desc=f'reading {name}', unit=' rows', total=limit)
    iterator = iter(rows)
    count = rows_read = 0
    columns: set[str] = set()
    while limit is None or count < limit:
        try:
            row_id, make_atoms, labels = next(iterator)
        except StopIteration:
            break
        except _READ_ERRORS as exc:
            builder.skip(
                f'{name}[{rows_read}:]',
                'truncated file',
                f'the file breaks off after {rows_read} rows, which are kept: {str(exc) or type(exc).__name__}',
            )
            break
        rows_read += 1
        columns.update(labels or {})
        if wanted is not None and str(row_id) not in wanted:
            continue
        count += 1
        # labels None: the reader could not even read the row, and its parser's reason is the one to give
        if labels is not None and not builder.accepts(row_id, labels):
            continue
        try:
            atoms = make_atoms()
        except InvalidStructure as exc:
            builder.skip(row_id, exc.reason, exc.detail)
            continue
        except Exception as exc:  # noqa: BLE001 - a parser's own error: this row fails, the others go on
            builder.skip(row_id, 'unparsable structure', f'{type(exc).__name__}: {str(exc)[:200]}')
            continue
        builder.add(row_id, *atoms, labels=labels)
    return rows_read, columns


def _cache_file(path: pathlib.Path, fmt, limit, targets, ids) -> pathlib.Path:
    stat = path.stat()
    fields = [
        str(path.resolve()),
        stat.st_size,
        stat.st_mtime_ns,
        fmt,
        limit,
        list(targets) if targets is not None else None,
        'v1',
    ]
    if ids is not None:  # appended only when given, so that existing cache entries stay valid
        fields.append(sorted(map(str, ids)))
    key = json.dumps(fields)
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
