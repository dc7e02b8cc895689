"""Between one ``StructureSet`` and single ``StructureData`` nodes, keeping the provenance graph connected.

A WorkChain that sends some structures of a set to DFT needs one ``StructureData`` per structure,
created *from* the set by a process, so that the graph leads from a DFT result back to the set (and to
the prediction that sent it there). :func:`select_structures` (entry point ``hpcai.structures.select``)
does that; :func:`structures_from_nodes` goes the other way.

Structure ids (``mp-149``, ``agm002153``, a file name) are often no valid AiiDA link label (letters,
digits and single underscores). :func:`link_label` maps an id to one; the id itself is kept as the
``label`` of the ``StructureData``, and :func:`structures_from_nodes` reads it back from there.
"""

from __future__ import annotations

import re

from aiida import orm
from aiida.common.links import validate_link_label
from aiida.engine import calcfunction

from aiida_hpcai.data.structure_set import StructureSet

__all__ = ('link_label', 'invalid_link_labels', 'select_structures', 'structures_from_nodes', 'structure_id')


def link_label(structure_id: str) -> str:
    """A valid link label for ``structure_id``: other characters become ``_`` (``mp-149`` -> ``mp_149``).

    Runs of underscores collapse to one (``__`` separates namespaces in AiiDA), and an id that does not
    start with a letter gets the prefix ``id_`` (``2153`` -> ``id_2153``).
    """
    label = re.sub(r'_+', '_', re.sub(r'[^A-Za-z0-9_]', '_', str(structure_id))).strip('_')
    return label if label[:1].isalpha() else f'id_{label}'.rstrip('_')


def invalid_link_labels(keys) -> list[str]:
    """The ``keys`` that are not valid link labels, sorted."""
    invalid = []
    for key in keys:
        try:
            validate_link_label(key)
        except ValueError:
            invalid.append(key)
    return sorted(invalid)


def structure_id(key: str, node: orm.StructureData) -> str:
    """The id of the structure ``node`` given under the link label ``key``: its ``label`` where ``key`` is
    that label's :func:`link_label` (how :func:`select_structures` names its outputs), else ``key``."""
    return node.label if node.label and link_label(node.label) == key else key


@calcfunction
def structures_from_nodes(**structure_nodes: orm.StructureData) -> StructureSet:
    """Gather StructureData nodes into one StructureSet, in sorted key order; ids by :func:`structure_id`."""
    keys = sorted(structure_nodes)
    nodes = [structure_nodes[key] for key in keys]
    return StructureSet.from_structuredata(nodes, ids=[structure_id(key, node) for key, node in zip(keys, nodes)])


@calcfunction
def select_structures(structures: StructureSet, ids: orm.List) -> dict:
    """The structures of ``structures`` with the given ``ids``, as ``StructureData`` and as a subset.

    Outputs: ``structures`` (a namespace; under :func:`link_label` of each id, the ``StructureData``
    labelled with the id itself) and ``subset`` (a ``StructureSet`` of the same structures, in the order
    of ``ids``, labels carried along). An id absent from the set, given twice, or two ids with the same
    link label are an error.
    """
    wanted = ids.get_list()
    position = {value: index for index, value in enumerate(structures.ids)}
    missing = [value for value in wanted if value not in position]
    if missing:
        raise ValueError(f'id(s) not in the StructureSet<{structures.pk}>: {missing}')
    labels = {}
    for value in wanted:
        label = link_label(value)
        if label in labels:
            raise ValueError(f'ids {labels[label]!r} and {value!r} map to the same link label {label!r}')
        labels[label] = value
    nodes = {}
    for label, value in labels.items():
        node = structures.get_structuredata(position[value])
        node.label = value
        nodes[label] = node
    return {'structures': nodes, 'subset': structures.subset([position[value] for value in wanted])}
