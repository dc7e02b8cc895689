"""DFT engines behind the engine-agnostic ``hpcai.dft`` WorkChain: one adapter per code (see ``base.py``)."""

from .base import ENGINES, MAGNETIC_ELEMENTS, EngineAdapter, ScfResult, band_gap_from_eigenvalues, get_engine

__all__ = ('ENGINES', 'MAGNETIC_ELEMENTS', 'EngineAdapter', 'ScfResult', 'band_gap_from_eigenvalues', 'get_engine')
