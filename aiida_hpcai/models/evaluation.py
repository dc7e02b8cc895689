"""The mp_cgcnn evaluation set and the run records shared by the release tool and the benchmarks.

One definition of the data the shipped models are trained and measured on (``mp_cgcnn.csv.gz``,
rows with formation energy below -5 eV/atom dropped, the seeded 80/10/10 split by material id whose
id lists are committed in ``benchmarks/splits/mp_cgcnn/``), so that ``aiida_hpcai.models.release``
(which makes the shipped models) and the scripts in ``benchmarks/`` (which measure them) cannot
drift apart. Also what every result file records about its run (``run_record``: date, commit,
command, machine and load) and the plumbing of side-by-side training runs.

Pure: no aiida import (``models/`` never imports aiida).
"""

from __future__ import annotations

import datetime
import os
import pathlib
import platform
import shlex
import subprocess
import sys

import numpy as np

from .datasets import default_data_dir, load_dataset, read_split, split_by_id, split_indices, write_split
from .structure_io import StructureArrays, read_npz

# the source checkout this module runs from (the committed split and the benchmarks live there)
REPO = pathlib.Path(__file__).resolve().parents[2]
TARGETS = {'formation_energy_per_atom': 'eV/atom', 'band_gap': 'eV'}
TARGET_MAE = {'formation_energy_per_atom': 0.045, 'band_gap': 0.35}
MIN_FORMATION_ENERGY = -5.0
SPLIT_DIR = REPO / 'benchmarks' / 'splits' / 'mp_cgcnn'
RESULTS_DIR = REPO / 'benchmarks' / 'results'


def default_source() -> pathlib.Path:
    """``mp_cgcnn.csv.gz`` under ``$HPCAI_DATA_DIR`` or ``../shared/data``."""
    root = default_data_dir() or REPO.parent / 'shared' / 'data'
    return root / 'mp_cgcnn' / 'mp_cgcnn.csv.gz'


def load_filtered(source: str | os.PathLike) -> tuple[StructureArrays, dict]:
    """mp_cgcnn with both labels, rows with formation energy < -5 eV/atom dropped (broken old MP
    entries); ``source`` is the csv.gz or an npz written by ``release export-npz``."""
    source = pathlib.Path(source)
    if source.suffix == '.npz':
        arrays = read_npz(source)
        info = {'source': source.name, 'n_loaded': len(arrays), 'n_skipped_by_loader': None}
    else:
        dataset = load_dataset(source, targets=list(TARGETS), cache=True, progress=True)
        arrays = dataset.arrays
        info = {'source': source.name, 'n_loaded': len(arrays), 'n_skipped_by_loader': len(dataset.skipped)}
    keep = np.nonzero(arrays.labels['formation_energy_per_atom'] >= MIN_FORMATION_ENERGY)[0]
    info.update(
        {
            'name': 'mp_cgcnn',
            'n_dropped_formation_energy_below_-5': int(len(arrays) - len(keep)),
            'n_structures': int(len(keep)),
        }
    )
    return arrays.subset(keep), info


def get_split(arrays: StructureArrays, split_dir: str | os.PathLike = SPLIT_DIR) -> dict[str, np.ndarray]:
    """The committed split (created on first use: 80/10/10 by material id, seed 0), as positions."""
    split_dir = pathlib.Path(split_dir)
    if not (split_dir / 'train.txt').exists():
        write_split(split_dir, split_by_id(arrays.ids, (0.8, 0.1, 0.1), seed=0))
    return split_indices([str(i) for i in arrays.ids], read_split(split_dir))


def split_graphs(
    arrays: StructureArrays, names=('val', 'test'), split_dir: str | os.PathLike = SPLIT_DIR
) -> tuple[dict, dict]:
    """The structures and the graphs of each named split (errors raise: val and test have no failures)."""
    from .graph import graphs_from_arrays

    split = get_split(arrays, split_dir)
    subsets = {name: arrays.subset(split[name]) for name in names}
    return subsets, {name: graphs_from_arrays(subset)[0] for name, subset in subsets.items()}


def small_test_structures(source: str | os.PathLike, count: int, max_atoms: int) -> StructureArrays:
    """The first ``count`` test-split structures with at most ``max_atoms`` atoms (the timing set)."""
    arrays, _ = load_filtered(source)
    test = get_split(arrays)['test']
    return arrays.subset([int(i) for i in test if arrays.natoms[i] <= max_atoms][:count])


def plain_mae(checkpoint: str | os.PathLike, graphs: list, labels: np.ndarray, device: str = 'cpu') -> float:
    """MAE of a checkpoint's plain prediction (evaluation mode, dropout off: the mean of its members)."""
    from .inference import EnsemblePredictor

    predictor = EnsemblePredictor.from_files([checkpoint], device)
    mean, _ = predictor.summarize(predictor.sample(graphs, 64, 'ensemble'))
    return float(np.mean(np.abs(mean - labels)))


# -- the crystal-structure-prediction sets (EquiCSP) ----------------------------------------------
CSP_DATASETS = ('perov_5', 'carbon_24', 'mp20')
MP20_MAX_ATOMS = 20


def _concatenated_splits(parts: dict[str, StructureArrays]) -> tuple[StructureArrays, dict[str, np.ndarray]]:
    from .structure_io import concatenate

    arrays = concatenate([('', part) for part in parts.values()])
    split, start = {}, 0
    for name, part in parts.items():
        split[name] = np.arange(start, start + len(part))
        start += len(part)
    return arrays, split


def csp_dataset(name: str, data_dir: str | os.PathLike | None = None) -> tuple[StructureArrays, dict, dict]:
    """A CSP benchmark set as (structures, split positions {train, val, test}, info).

    ``perov_5`` and ``carbon_24``: CDVAE's splits (train from the JARVIS copy of the same split, val and
    test from CDVAE's CSVs). ``mp20``: the mp_cgcnn set of the shipped surrogates with at most
    :data:`MP20_MAX_ATOMS` atoms, on the committed split (so no test structure of the surrogates is
    trained on); the full MP-20 CSV is not available offline.
    """
    if name not in CSP_DATASETS:
        raise ValueError(f'unknown CSP dataset {name!r}; known: {", ".join(CSP_DATASETS)}')
    root = pathlib.Path(data_dir) if data_dir else (default_data_dir() or REPO.parent / 'shared' / 'data')
    if name == 'mp20':
        arrays, info = load_filtered(root / 'mp_cgcnn' / 'mp_cgcnn.csv.gz')
        split = get_split(arrays)
        split = {
            key: np.array([i for i in value if arrays.natoms[i] <= MP20_MAX_ATOMS]) for key, value in split.items()
        }
        info = {**info, 'name': 'mp20', 'max_atoms': MP20_MAX_ATOMS, 'split_dir': 'benchmarks/splits/mp_cgcnn'}
    else:
        files = {'train': 'train_structures_from_jarvis.csv.gz', 'val': 'val.csv', 'test': 'test.csv'}
        parts = {key: load_dataset(root / name / file, targets=[], cache=True).arrays for key, file in files.items()}
        arrays, split = _concatenated_splits(parts)
        info = {'name': name, 'source': {key: f'{name}/{file}' for key, file in files.items()}}
    info['n_structures'] = {key: int(len(value)) for key, value in split.items()}
    return arrays, split, info


def thread_environment(threads: int) -> dict[str, str]:
    """The variables that hold a child process's OpenMP/MKL pools to ``threads``."""
    return {'OMP_NUM_THREADS': str(threads), 'MKL_NUM_THREADS': str(threads)}


def git_commit(path: str | os.PathLike = REPO) -> str:
    """The checkout's HEAD commit, with ``+changes`` when tracked files other than the benchmark results
    (which a running benchmark rewrites itself) differ from it; 'unknown' outside a git checkout."""
    try:
        head = subprocess.run(
            ['git', 'rev-parse', 'HEAD'], cwd=path, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ['git', 'status', '--porcelain', '--untracked-files=no', '--', ':/', ':(top,exclude)benchmarks/results'],
            cwd=path,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'
    return f'{head}+changes' if dirty else head


def command_line(argv: list[str] | None = None) -> str:
    """The command that is running, as one types it again in the checkout (``python -m`` for a module
    of the package, a script by its path in the checkout)."""
    argv = list(sys.argv if argv is None else argv)
    script = pathlib.Path(argv[0]).resolve() if argv and argv[0] not in ('', '-c') else None
    if script is not None and script.is_relative_to(REPO / 'aiida_hpcai'):
        head = ['-m', '.'.join(script.relative_to(REPO).with_suffix('').parts)]
    elif script is not None and script.is_relative_to(REPO):
        head = [str(script.relative_to(REPO))]
    else:
        head = argv[:1]
    return ' '.join(['python', *head, *(shlex.quote(arg) for arg in argv[1:])])


def run_record(command: str | None = None, load_before: tuple | None = None, **machine) -> dict:
    """What a result file records about its run: date (UTC), commit, command, and the machine
    (processor, cores, load average before and after; ``machine`` adds entries)."""
    return {
        'date': datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC'),
        'commit': git_commit(),
        'command': command or command_line(),
        'machine': {
            'processor': platform.processor() or platform.machine(),
            'cpus': os.cpu_count(),
            'load_average_before': list(load_before) if load_before is not None else None,
            'load_average_after': list(os.getloadavg()),
            **machine,
        },
    }


# -- side-by-side training runs (equal-budget, size-curve) ----------------------------------------
def cpu_member_command(
    data: str, target: str, max_minutes: float, threads: int, mc_samples: int, folder: pathlib.Path, *extra: str
) -> list[str]:
    """The release tool's ``train`` of one ``cpu`` member (member 0) under a budget and thread count."""
    return [
        sys.executable,
        '-m',
        'aiida_hpcai.models.release',
        'train',
        '--data',
        str(data),
        '--target',
        target,
        '--config',
        'cpu',
        '--member',
        '0',
        '--max-minutes',
        str(max_minutes),
        '--threads',
        str(threads),
        '--mc-samples',
        str(mc_samples),
        '--out',
        str(folder),
        *extra,
    ]


def run_side_by_side(jobs: dict[str, list[str]], out: pathlib.Path, threads: int) -> None:
    """Start every command at once (``threads`` each, log in ``out/NAME.log``) and wait for all of them."""
    env = {**os.environ, **thread_environment(threads)}
    logs = {name: open(out / f'{name}.log', 'w') for name in jobs}
    try:
        processes = [
            subprocess.Popen(command, env=env, stdout=logs[name], stderr=subprocess.STDOUT, cwd=REPO)
            for name, command in jobs.items()
        ]
        failed = [process.wait() for process in processes]
    finally:
        for log in logs.values():
            log.close()
    if any(failed):
        raise SystemExit(f'a training failed: see the logs in {out}')


def validation_curves_figure(
    curves: dict, units: str, path: pathlib.Path, title: str | None = None, target: float | None = None
) -> None:
    """Validation MAE against training wall time, one line per ``label: {'minutes', 'val_mae'}``."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 3.5))
    for label, curve in curves.items():
        axes.plot(curve['minutes'], curve['val_mae'], 'o-', markersize=3, label=label)
    if target is not None:
        axes.axhline(target, color='grey', linestyle=':', label='cpu-config target')
    axes.set_yscale('log')
    axes.set_xlabel('training wall time (min)')
    axes.set_ylabel(f'validation MAE ({units})')
    if title:
        axes.set_title(title)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
