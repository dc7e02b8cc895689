"""Validity screening of candidate structures (see docs/source/screening.md).

:mod:`.filters` holds the pure filters (pymatgen, spglib, SMACT; no AiiDA), :mod:`.calcfunctions` the
``hpcai.screen`` calcfunction over a ``StructureSet`` and the fingerprint extras of stored structures.
See docs/source/architecture.md for the layers and where a new filter goes.
"""
