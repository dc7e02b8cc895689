"""Store and reload N structures as ONE StructureSet and as N StructureData nodes; report the ratio.

Runs on a throw-away `core.sqlite_dos` profile (the embedded default) in a temporary folder, so
it measures the storage users get from `verdi presto`, and leaves no trace in your own profile.

    python benchmarks/structureset_vs_structuredata.py [--count 10000]

Writes benchmarks/results/structureset_vs_structuredata.json.
"""

import argparse
import json
import os
import pathlib
import platform
import tempfile
import time

RESULTS = pathlib.Path(__file__).parent / 'results'


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--count', type=int, default=10000)
    parser.add_argument('--data', default=None, help='mp_cgcnn.csv.gz (default: $HPCAI_DATA_DIR or ../shared/data)')
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix='hpcai-bench-')
    os.environ['AIIDA_PATH'] = workdir  # before aiida is imported: a private config folder

    from aiida import load_profile, orm
    from aiida.manage.configuration import create_profile, get_config
    from tqdm import tqdm

    from aiida_hpcai.data.structure_set import StructureSet
    from aiida_hpcai.models.datasets import default_data_dir, load_dataset
    from aiida_hpcai.models.evaluation import run_record

    data = pathlib.Path(args.data) if args.data else default_data_dir() / 'mp_cgcnn' / 'mp_cgcnn.csv.gz'
    arrays = load_dataset(data, limit=args.count + 100, targets=['formation_energy_per_atom']).arrays
    arrays = arrays.subset(range(args.count))
    structures = list(arrays.iter_pymatgen())

    profile = create_profile(
        get_config(create=True),
        name='bench',
        email='bench@localhost',
        storage_backend='core.sqlite_dos',
        storage_config={'filepath': f'{workdir}/storage'},
    )
    load_profile(profile.name, allow_switch=True)

    load_before = os.getloadavg()
    start = time.perf_counter()
    node = StructureSet(arrays).store()
    set_store = time.perf_counter() - start
    pk = node.pk
    start = time.perf_counter()
    reloaded = [s for s in orm.load_node(pk)]
    set_reload = time.perf_counter() - start
    assert len(reloaded) == args.count

    start = time.perf_counter()
    group = orm.Group(label='bench-structuredata').store()
    nodes = [orm.StructureData(pymatgen=s).store() for s in tqdm(structures, desc='StructureData store')]
    group.add_nodes(nodes)
    many_store = time.perf_counter() - start
    start = time.perf_counter()
    query = orm.QueryBuilder().append(orm.Group, filters={'label': 'bench-structuredata'}, tag='g')
    query.append(orm.StructureData, with_group='g', project='*').order_by({orm.StructureData: {'id': 'asc'}})
    reloaded_many = [n.get_pymatgen() for n in query.all(flat=True)]
    many_reload = time.perf_counter() - start
    assert len(reloaded_many) == args.count

    result = {
        'benchmark': 'structureset_vs_structuredata',
        'structures': args.count,
        'atoms': int(arrays.natoms.sum()),
        'source': str(data),
        'storage_backend': 'core.sqlite_dos',
        'structureset_store_s': set_store,
        'structureset_reload_s': set_reload,
        'structuredata_store_s': many_store,
        'structuredata_reload_s': many_reload,
        'store_ratio': many_store / set_store,
        'reload_ratio': many_reload / set_reload,
        'total_ratio': (many_store + many_reload) / (set_store + set_reload),
        'reload_means': 'load the node(s) and build one pymatgen Structure per structure',
        # Other work on the machine slows the long StructureData phase more than the short StructureSet one.
        'run': run_record(load_before=load_before, python=platform.python_version(), platform=platform.platform()),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / 'structureset_vs_structuredata.json').write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == '__main__':
    main()
