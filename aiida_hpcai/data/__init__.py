"""AiiDA data types of aiida-hpcai: StructureSet (``hpcai.structures``) and ModelData (``hpcai.model``)."""

from .model import ModelData
from .structure_set import StructureSet

__all__ = ('ModelData', 'StructureSet')
