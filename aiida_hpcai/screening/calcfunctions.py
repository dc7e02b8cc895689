"""The AiiDA layer of screening: the ``hpcai.screen`` calcfunction and the structure fingerprints in extras.

``hpcai.screen`` (:func:`screen_structures`) screens a :class:`~aiida_hpcai.data.structure_set.StructureSet`
with :func:`aiida_hpcai.screening.filters.screen` and rejects duplicates of the ``known`` nodes it is given
as inputs, so every "duplicate of" verdict is linked in the provenance graph to what it duplicates.
:func:`screen_structure_set` is how to call it: it finds, by fingerprint, the structures already in the
profile that a candidate may duplicate and passes them as ``known`` inputs.

A fingerprint (reduced formula, space group at :data:`~aiida_hpcai.screening.filters.FINGERPRINT_SYMPREC`,
volume per atom) is the extra :data:`FINGERPRINT_EXTRA` of a stored ``StructureData``; ``hpcai.dft_batch``
writes it on every relaxed structure, and :func:`set_fingerprint` on any other.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from aiida import orm
from aiida.engine import ExitCode, calcfunction

from ..data.structure_set import StructureSet
from . import filters

__all__ = ('FINGERPRINT_EXTRA', 'find_known_structures', 'screen_structure_set', 'screen_structures', 'set_fingerprint')

FINGERPRINT_EXTRA = 'hpcai_fingerprint'

#: Exit status of :func:`screen_structures` for parameters :class:`~aiida_hpcai.screening.filters.ScreeningParameters`
#: refuses (an unknown key, a negative tolerance).
ERROR_INVALID_PARAMETERS = 301


def set_fingerprint(node: orm.StructureData) -> dict:
    """Write (and return) the fingerprint extra of the stored ``node``, so later screenings can find it."""
    fingerprint = filters.fingerprint(node.get_pymatgen_structure())
    node.base.extras.set(FINGERPRINT_EXTRA, fingerprint)
    return fingerprint


def find_known_structures(structures: Iterable, volume_tolerance: float) -> list[orm.StructureData]:
    """The fingerprinted ``StructureData`` of the profile whose fingerprint matches one of ``structures``.

    One query: per (reduced formula, space group) of the candidates, the range of volumes per atom
    :func:`~aiida_hpcai.screening.filters.fingerprints_match` accepts.
    """
    ranges: dict[tuple[str, int], tuple[float, float]] = {}
    for structure in structures:
        fingerprint = filters.fingerprint(structure)
        key = (fingerprint['reduced_formula'], fingerprint['space_group'])
        volume = fingerprint['volume_per_atom']
        # |a - b| <= tol * max(a, b)  <=>  a (1 - tol) <= b <= a / (1 - tol)
        low, high = volume * (1 - volume_tolerance), volume / max(1 - volume_tolerance, 1e-9)
        previous = ranges.get(key, (low, high))
        ranges[key] = (min(low, previous[0]), max(high, previous[1]))
    if not ranges:
        return []
    prefix = f'extras.{FINGERPRINT_EXTRA}'
    alternatives = [
        {
            'and': [
                {f'{prefix}.reduced_formula': formula},
                {f'{prefix}.space_group': number},
                {f'{prefix}.volume_per_atom': {'>=': low}},
                {f'{prefix}.volume_per_atom': {'<=': high}},
            ]
        }
        for (formula, number), (low, high) in sorted(ranges.items())
    ]
    query = orm.QueryBuilder().append(orm.StructureData, filters={'or': alternatives}, tag='structure')
    query.order_by({'structure': {'id': 'asc'}})
    return query.all(flat=True)


@calcfunction
def screen_structures(structures: StructureSet, parameters: orm.Dict | None = None, **known):
    """Screen ``structures`` (entry point ``hpcai.screen``); ``known``: StructureData / StructureSet not to duplicate.

    ``parameters``: the fields of :class:`~aiida_hpcai.screening.filters.ScreeningParameters` (defaults for
    the others). Outputs: ``valid_structures`` (the passing subset, ids and labels kept), ``rejected``
    (``{'rejected': [{'id', 'reason', 'detail'}, ...]}``, input order) and ``counts`` (``total``, ``valid``
    and one count per reason of :data:`~aiida_hpcai.screening.filters.REASONS`).
    """
    try:
        settings = filters.ScreeningParameters.from_dict(parameters.get_dict() if parameters is not None else None)
    except (TypeError, ValueError) as exception:
        return ExitCode(ERROR_INVALID_PARAMETERS, f'invalid screening parameters: {exception}')
    known_structures = []
    for _, node in sorted(known.items()):
        if isinstance(node, StructureSet):
            known_structures.extend(
                (f'{identifier} of StructureSet<{node.uuid}>', structure)
                for identifier, structure in zip(node.ids, node)
            )
        else:
            known_structures.append((f'StructureData<{node.uuid}>', node.get_pymatgen_structure()))
    result = filters.screen(list(structures), structures.ids, settings, known_structures)
    counts = {'total': len(structures), 'valid': len(result.valid), **result.counts()}
    rejected = [{'id': item.id, 'reason': item.reason, 'detail': item.detail} for item in result.rejected]
    return {
        'valid_structures': structures.subset(result.valid),
        'rejected': orm.Dict({'rejected': rejected}),
        'counts': orm.Dict(counts),
    }


def screen_structure_set(
    structures: StructureSet,
    parameters: dict | orm.Dict | None = None,
    known_sets: Sequence[StructureSet] = (),
    search_profile: bool = True,
    metadata: dict | None = None,
):
    """Run ``hpcai.screen`` on ``structures`` against the profile's fingerprinted structures and ``known_sets``.

    Returns ``(outputs, node)`` as :func:`aiida.engine.run_get_node`. Call it from a WorkChain step to have
    the calcfunction linked to the WorkChain. Profile look-ups happen only with de-duplication on.
    """
    if isinstance(parameters, dict):
        parameters = orm.Dict(parameters)
    settings = filters.ScreeningParameters.from_dict(parameters.get_dict() if parameters is not None else None)
    known: list[orm.Data] = list(known_sets)
    if settings.deduplicate and search_profile:
        known.extend(find_known_structures(structures, settings.volume_tolerance))
    inputs = {f'known_{index}': node for index, node in enumerate(known)}
    if parameters is not None:
        inputs['parameters'] = parameters
    if metadata is not None:
        inputs['metadata'] = metadata
    return screen_structures.run_get_node(structures=structures, **inputs)
