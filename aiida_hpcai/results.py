"""What the surrogate predicted for a structure, by which model, with which sigma: one call.

``hpcai.surrogate`` stores its ``classified_predictions`` with the structure ids as the attribute
``ids``, so ``QueryBuilder`` finds every prediction of an id without opening an array; the graph then
leads to the ``hpcai.predict`` CalcJob and its ``ModelData`` inputs. :func:`predictions_for` runs that
query and reads the values from the arrays; ``aiida-hpcai results --id ID`` prints it.
"""

from __future__ import annotations

import dataclasses
import datetime

import numpy as np
from aiida import orm
from aiida.common.links import LinkType

from aiida_hpcai.data.model import ModelData

__all__ = ('Prediction', 'predictions_for', 'prediction_query')

#: The calcfunction of ``hpcai.surrogate`` that creates the classified predictions.
CLASSIFY_LABEL = 'classify_predictions'


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One prediction of one structure, with where it came from."""

    structure_id: str
    mean: float
    sigma: float
    status: str
    reason: str
    confident: bool
    target: str | None
    units: str | None
    sigma_threshold: float
    models: tuple[int, ...]
    """pks of the ``ModelData`` inputs of the ``hpcai.predict`` CalcJob (the ensemble)."""
    predictions: int
    """pk of the ``classified_predictions`` ArrayData the values come from."""
    surrogate: int | None
    """pk of the ``hpcai.surrogate`` WorkChain that returned them (``None`` if the calcfunction ran alone)."""
    ctime: datetime.datetime

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), 'models': list(self.models), 'ctime': self.ctime.isoformat()}


def prediction_query(structure_id: str) -> orm.QueryBuilder:
    """The ``QueryBuilder`` behind :func:`predictions_for`: one row per (predictions node, model).

    Projects the predictions node's pk, ids, target, units, threshold and ctime, and the model's pk.
    """
    query = orm.QueryBuilder()
    query.append(
        orm.ArrayData,
        filters={'attributes.ids': {'contains': [structure_id]}},
        project=[
            'id',
            'attributes.ids',
            'attributes.target',
            'attributes.units',
            'attributes.sigma_threshold',
            'ctime',
        ],
        tag='predictions',
    )
    query.append(
        orm.CalcFunctionNode,
        with_outgoing='predictions',
        filters={'attributes.process_label': CLASSIFY_LABEL},
        tag='classify',
    )
    query.append(orm.ArrayData, with_outgoing='classify', edge_filters={'label': 'raw_predictions'}, tag='raw')
    query.append(orm.CalcJobNode, with_outgoing='raw', tag='predict')
    query.append(ModelData, with_outgoing='predict', project=['id'])
    query.order_by({'predictions': {'ctime': 'asc'}})
    return query


def predictions_for(structure_id: str) -> list[Prediction]:
    """Every prediction ``hpcai.surrogate`` made for ``structure_id``, oldest first (empty if none)."""
    found: dict[int, dict] = {}
    for pk, ids, target, units, threshold, ctime, model_pk in prediction_query(structure_id).iterall():
        row = found.setdefault(
            pk, {'ids': ids, 'target': target, 'units': units, 'threshold': threshold, 'ctime': ctime, 'models': []}
        )
        row['models'].append(model_pk)
    predictions = []
    for pk, row in found.items():
        node = orm.load_node(pk)
        index = row['ids'].index(structure_id)
        returned = node.base.links.get_incoming(link_type=LinkType.RETURN).all()
        surrogates = [link.node.pk for link in returned if link.node.process_type == 'aiida.workflows:hpcai.surrogate']
        predictions.append(
            Prediction(
                structure_id=structure_id,
                mean=float(node.get_array('mean')[index]),
                sigma=float(node.get_array('sigma')[index]),
                status=str(node.get_array('status')[index]),
                reason=str(node.get_array('reason')[index]),
                confident=bool(np.asarray(node.get_array('confident'))[index]),
                target=row['target'],
                units=row['units'],
                sigma_threshold=row['threshold'],
                models=tuple(sorted(row['models'])),
                predictions=pk,
                surrogate=surrogates[0] if surrogates else None,
                ctime=row['ctime'],
            )
        )
    return predictions
