"""Shared pieces of the peer-model scripts (run with the peers venv's python, never the project's).

Nothing here imports aiida or aiida_hpcai: the peers venv has neither, and the peers must be
measured with their own packages only. Structures travel between the project and these scripts
as files (see ``read_structures``); ALIGNN checkpoints use alignn's own folder layout
(``config.json`` with a ``model`` section + ``best_model.pt``, as ``alignn.train`` writes them).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pathlib
import socket
import sys

# The ALIGNN size of ANCHORS.md: 1 ALIGNN + 2 GCN layers, hidden 64, CGCNN atom features (92),
# 107,009 parameters. A graph-level regressor: no forces, no per-atom energy scaling, no
# short-bond penalty (those belong to alignn's force-field use of the same class).
ALIGNN_MODEL_CONFIG = {
    'name': 'alignn_atomwise_pure',
    'alignn_layers': 1,
    'gcn_layers': 2,
    'atom_input_features': 92,
    'edge_input_features': 80,
    'triplet_input_features': 40,
    'embedding_features': 64,
    'hidden_features': 64,
    'output_features': 1,
    'calculate_gradient': False,
    'gradwise_weight': 0.0,
    'stresswise_weight': 0.0,
    'atomwise_weight': 0.0,
    'energy_mult_natoms': False,
    'use_penalty': False,
    'use_zbl': False,
}
# ALIGNN's published graph: 12 nearest neighbours within 8 A, angles between all of them
# (alignn's own pure-torch predictor uses the same: three-body cutoff = two-body cutoff).
ALIGNN_GRAPH = {'cutoff': 8.0, 'max_neighbors': 12, 'three_body_cutoff': 8.0, 'atom_features': 'cgcnn'}


def limit_threads(threads: int) -> None:
    """Call before importing torch/numpy so that OpenMP and BLAS pools start at this size."""
    for name in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS'):
        os.environ[name] = str(threads)


def set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already set once in this process
        pass


class NetworkBlocked(RuntimeError):
    pass


def forbid_network() -> None:
    """Make every outgoing internet connection fail loudly, so a hidden download cannot pass
    unnoticed (local Unix sockets, which multiprocessing uses, stay allowed)."""
    for name in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE'):
        os.environ[name] = '1'
    internet = {socket.AF_INET, socket.AF_INET6}
    original_connect, original_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def refuse(what):
        raise NetworkBlocked(f'network access attempted (blocked by the peers benchmark): {what}')

    def connect(self, address):
        if self.family in internet:
            refuse(address)
        return original_connect(self, address)

    def connect_ex(self, address):
        if self.family in internet:
            refuse(address)
        return original_connect_ex(self, address)

    def getaddrinfo(host, *args, **kwargs):
        refuse(host)

    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.getaddrinfo = getaddrinfo


def versions() -> dict:
    from importlib import metadata

    found = {'python': sys.version.split()[0]}
    for package in ('torch', 'alignn', 'chgnet', 'pymatgen', 'pymatgen-core', 'jarvis-tools', 'ase', 'numpy'):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return found


# -- structures ----------------------------------------------------------------------------------
def _open_text(path: pathlib.Path):
    return io.TextIOWrapper(gzip.open(path), encoding='utf-8') if path.suffix == '.gz' else open(path, encoding='utf-8')


def read_structures(path, limit: int | None = None, ids: list[str] | None = None):
    """Read ``(ids, pymatgen structures, labels)`` from one file.

    Formats, by file name:

    - ``*.json``: a list of pymatgen ``Structure.as_dict()`` dicts, or an object
      ``{"ids": [...], "structures": [...], "labels": {name: [...]}}`` (ids and labels optional);
    - ``*.extxyz`` / ``*.xyz``: extended XYZ read with ASE (ids from an ``id`` info key if present);
    - ``*.csv`` / ``*.csv.gz``: a table with a ``cif`` column and optionally ``material_id`` and
      numeric label columns (the mp_cgcnn format of shared/data).

    ``ids`` (csv only) keeps just those rows; ``limit`` keeps the first ``limit`` structures.
    Labels are a dict ``{column: list of float}`` (empty for formats without labels).
    """
    path = pathlib.Path(path)
    name = path.name.lower()
    if name.endswith('.json') or name.endswith('.json.gz'):
        return _read_json(path, limit)
    if name.endswith('.extxyz') or name.endswith('.xyz'):
        return _read_extxyz(path, limit)
    if name.endswith('.csv') or name.endswith('.csv.gz'):
        return _read_csv(path, limit, ids)
    raise ValueError(f'unknown structure file format: {path} (use .json, .extxyz/.xyz or .csv[.gz])')


def _read_json(path, limit):
    from pymatgen.core import Structure

    with _open_text(path) as handle:
        data = json.load(handle)
    if isinstance(data, dict):
        dicts, ids, labels = data['structures'], data.get('ids'), data.get('labels') or {}
    else:
        dicts, ids, labels = data, None, {}
    dicts = dicts[:limit] if limit else dicts
    ids = [str(i) for i in ids[: len(dicts)]] if ids else [str(n) for n in range(len(dicts))]
    labels = {k: [float(x) for x in v[: len(dicts)]] for k, v in labels.items()}
    return ids, [Structure.from_dict(d) for d in dicts], labels


def _read_extxyz(path, limit):
    from ase.io import read
    from pymatgen.io.ase import AseAtomsAdaptor

    frames = read(str(path), index=f':{limit}' if limit else ':')
    ids = [str(f.info.get('id', n)) for n, f in enumerate(frames)]
    return ids, [AseAtomsAdaptor.get_structure(f) for f in frames], {}


def _read_csv(path, limit, wanted):
    import csv
    import warnings

    from pymatgen.core import Structure

    csv.field_size_limit(1 << 30)
    ids, structures, labels = [], [], {}
    wanted = None if wanted is None else set(wanted)
    with _open_text(path) as handle:
        reader = csv.DictReader(handle)
        numeric = [c for c in reader.fieldnames if c not in ('material_id', 'cif', 'formula')]
        for n, row in enumerate(reader):
            identifier = row.get('material_id') or str(n)
            if wanted is not None and identifier not in wanted:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                structures.append(Structure.from_str(row['cif'], fmt='cif'))
            ids.append(identifier)
            for column in numeric:
                try:
                    labels.setdefault(column, []).append(float(row[column]))
                except (TypeError, ValueError):
                    labels.setdefault(column, []).append(float('nan'))
            if limit and len(structures) >= limit:
                break
    return ids, structures, labels


# -- ALIGNN ----------------------------------------------------------------------------------------
def jarvis_atoms(structure):
    """pymatgen Structure -> jarvis Atoms (what alignn's graph builder reads)."""
    from jarvis.core.atoms import Atoms

    return Atoms(
        lattice_mat=structure.lattice.matrix,
        coords=structure.frac_coords,
        elements=[site.specie.symbol for site in structure],
        cartesian=False,
    )


def alignn_graph(structure, graph: dict = ALIGNN_GRAPH):
    """(g, lg, lattice) with alignn's own DGL-free builder."""
    import torch
    from alignn.torch_graph_builder import build_pure_torch_graph

    atoms = jarvis_atoms(structure)
    g, lg = build_pure_torch_graph(
        atoms=atoms,
        two_body_cutoff=graph['cutoff'],
        three_body_cutoff=graph['three_body_cutoff'],
        max_neighbors=graph['max_neighbors'],
        atom_features=graph['atom_features'],
        use_matscipy_topology=False,
        compute_line_graph=True,
    )
    return g, lg, torch.as_tensor(atoms.lattice_mat, dtype=torch.get_default_dtype())


def alignn_batch(items):
    """Batch a list of (g, lg, lattice) for ALIGNNAtomWisePure.forward."""
    import torch
    from alignn.torch_graph_builder import batch_torch_graph_pairs

    g, lg = batch_torch_graph_pairs([(item[0], item[1]) for item in items])
    return g, lg, torch.stack([item[2] for item in items])


def new_alignn_model(model_config: dict = ALIGNN_MODEL_CONFIG):
    from alignn.models.alignn_atomwise_pure import ALIGNNAtomWisePure, ALIGNNAtomWisePureConfig

    return ALIGNNAtomWisePure(ALIGNNAtomWisePureConfig(**model_config))


def save_alignn_checkpoint(
    folder, model, model_config: dict, graph: dict, extra: dict | None = None, state: dict | None = None
) -> None:
    """alignn's layout: config.json (graph settings at top level, ``model`` section) + best_model.pt."""
    import torch

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state if state is not None else model.state_dict(), folder / 'best_model.pt')
    config = {**graph, 'model': model_config, **(extra or {})}
    (folder / 'config.json').write_text(json.dumps(config, indent=2))


def load_alignn_checkpoint(folder):
    """Model (eval mode) and graph settings from a checkpoint folder written by save_alignn_checkpoint
    or by alignn's own trainer (same layout)."""
    import torch

    folder = pathlib.Path(folder)
    config = json.loads((folder / 'config.json').read_text())
    model_config = dict(config['model'])
    model_config['name'] = 'alignn_atomwise_pure'
    model = new_alignn_model(model_config)
    state = torch.load(folder / 'best_model.pt', map_location='cpu', weights_only=True)
    if isinstance(state, dict) and 'model' in state and not any(k.startswith('atom_embedding') for k in state):
        state = state['model']
    model.load_state_dict(state)  # strict: a checkpoint of another shape must not load silently
    three_body = config.get('three_body_cutoff')
    graph = {
        'cutoff': float(config.get('cutoff', ALIGNN_GRAPH['cutoff'])),
        'max_neighbors': int(config.get('max_neighbors', ALIGNN_GRAPH['max_neighbors'])),
        'three_body_cutoff': float(three_body if three_body is not None else config.get('cutoff', 8.0)),
        'atom_features': config.get('atom_features', 'cgcnn'),
    }
    return model.eval(), model_config, graph
