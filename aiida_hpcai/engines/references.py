"""Elemental reference structures and energies for formation energies in ``hpcai.dft``.

Structures: ``reference_structures.json`` beside this module, made by ``scripts/make_dft_references.py``
from the dataset we compare with (``mp_cgcnn``): per element, its lowest-formation-energy single-element
entry (gas-phase elements as molecular crystals, relaxed at fixed cell, O2 as a spin triplet; layered
elements, graphite C and black P, relaxed at the dataset's fixed cell too: PBE does not bind their layers).

Energies: a reference is one finished-ok ``hpcai.dft`` WorkChain on that structure, tagged with the extra
``hpcai_reference = {'element': ..., **identity}`` (identity: engine, protocol, protocol digest,
pseudopotential family; see ``EngineAdapter.identity``; plus ``cell: 'dataset'`` for a layered element,
see :func:`reference_tag`). Every later WorkChain with the same identity
finds it with :func:`find_reference` and links its ``energy_per_atom`` output into its formation-energy
calcfunction, so a reference is computed once per identity and its use is visible in the provenance graph.
"""

from __future__ import annotations

import functools
import json
import pathlib

REFERENCE_FILE = pathlib.Path(__file__).parent / 'reference_structures.json'
REFERENCE_EXTRA = 'hpcai_reference'


@functools.lru_cache(maxsize=1)
def load_reference_table() -> dict:
    """Return the content of ``reference_structures.json``."""
    return json.loads(REFERENCE_FILE.read_text(encoding='utf-8'))


def get_reference_entry(element: str) -> dict | None:
    """Return the reference entry of ``element`` (material id, structure, initial moment, ...) or ``None``."""
    return load_reference_table()['references'].get(element)


def missing_references(elements) -> list[str]:
    """Return the sorted elements among ``elements`` without a reference structure."""
    return sorted(element for element in set(elements) if get_reference_entry(element) is None)


def get_reference_structure(element: str):
    """Return a new (unstored) ``StructureData`` of the reference structure of ``element``."""
    from aiida import orm
    from pymatgen.core import Lattice, Structure

    entry = get_reference_entry(element)
    if entry is None:
        raise KeyError(f'no reference structure for {element}')
    structure = Structure(Lattice(entry['lattice']), entry['species'], entry['frac_coords'])
    return orm.StructureData(pymatgen=structure)


def get_reference_magnetic_moments(element: str) -> dict[str, float]:
    """Initial moments of the reference run: the dataset's moment per atom, or ``{}`` (no spin polarization)."""
    moment = get_reference_entry(element)['magnetic_moment_per_atom']
    return {element: moment} if moment else {}


def fixed_cell(element: str) -> bool:
    """Whether the reference of ``element`` keeps the dataset's cell: molecular crystals and layered elements."""
    entry = get_reference_entry(element)
    return bool(entry['molecular_crystal'] or entry.get('layered'))


def reference_tag(element: str, identity: dict) -> dict:
    """The extra a reference of ``element`` computed under ``identity`` is tagged and found with.

    A layered element's reference is relaxed at the dataset's fixed cell, which the tag records
    (``cell: 'dataset'``), so it is never mistaken for one whose cell was relaxed.
    """
    tag = {'element': element, **identity}
    if get_reference_entry(element).get('layered'):
        tag['cell'] = 'dataset'
    return tag


def _filters(element: str, identity: dict) -> dict:
    return {f'extras.{REFERENCE_EXTRA}.{key}': value for key, value in reference_tag(element, identity).items()}


def find_reference(element: str, identity: dict):
    """Return the oldest finished-ok reference WorkChain node of ``element`` under ``identity``, or ``None``."""
    from aiida import orm

    query = orm.QueryBuilder()
    filters = _filters(element, identity)
    filters['attributes.exit_status'] = 0
    query.append(orm.WorkflowNode, filters=filters, tag='reference')
    query.order_by({'reference': {'ctime': 'asc'}})
    query.limit(1)
    result = query.first(flat=True)
    return result


def tag_reference(node, element: str, identity: dict) -> None:
    """Mark the finished-ok WorkChain ``node`` as the reference of ``element`` under ``identity``."""
    node.base.extras.set(REFERENCE_EXTRA, reference_tag(element, identity))
