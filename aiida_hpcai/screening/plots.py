"""Statistics and figures of a generation campaign (``hpcai.directive``): pure functions, matplotlib Agg, no AiiDA.

The figures follow the EquiCSP paper: valid rate per batch over time for each atom-count strategy
(Fig. 6b), element occurrence on the periodic table (Fig. 7a), atoms per cell (7b), crystal systems (7c)
and the distributions of a property predicted by the surrogate and computed by DFT (Fig. 8).
"""

from __future__ import annotations

import pathlib
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
from pymatgen.core import Element
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from aiida_hpcai.models.plots import _pyplot

__all__ = (
    'CRYSTAL_SYSTEMS',
    'atoms_per_cell_plot',
    'crystal_statistics',
    'crystal_systems_plot',
    'element_heatmap',
    'periodic_table_position',
    'property_distributions',
    'valid_rate_plot',
)

CRYSTAL_SYSTEMS = ('triclinic', 'monoclinic', 'orthorhombic', 'tetragonal', 'trigonal', 'hexagonal', 'cubic')


def crystal_statistics(structures: Iterable, symprec: float = 0.1) -> dict:
    """Per set of pymatgen structures: in how many structures each element occurs, atoms per cell, crystal systems.

    Keys are strings (JSON-ready): ``elements`` (symbol -> structures), ``atoms_per_cell`` (count -> structures),
    ``crystal_systems`` (system -> structures; ``unknown`` where spglib finds none at ``symprec``).
    """
    elements: Counter = Counter()
    sizes: Counter = Counter()
    systems: Counter = Counter()
    for structure in structures:
        elements.update(str(element) for element in structure.composition.elements)
        sizes[str(len(structure))] += 1
        try:
            systems[SpacegroupAnalyzer(structure, symprec=symprec).get_crystal_system()] += 1
        except Exception:  # noqa: BLE001 - spglib fails on degenerate cells; such a cell has no system
            systems['unknown'] += 1
    return {
        'elements': dict(sorted(elements.items())),
        'atoms_per_cell': {key: sizes[key] for key in sorted(sizes, key=int)},
        'crystal_systems': {key: systems[key] for key in (*CRYSTAL_SYSTEMS, 'unknown') if systems[key]},
    }


def periodic_table_position(symbol: str) -> tuple[int, int]:
    """(row, column) of an element on the 18-column table; lanthanides and actinides on rows 8 and 9 below."""
    z = Element(symbol).Z
    if 57 <= z <= 71:
        return 8, 3 + z - 57
    if 89 <= z <= 103:
        return 9, 3 + z - 89
    element = Element(symbol)
    return element.row, element.group


def _save(figure, plt, path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def valid_rate_plot(batches: Sequence[dict], path: str | pathlib.Path) -> None:
    """Valid rate of each batch (``valid / generated``) at its end time, one line per N strategy (Fig. 6b).

    ``batches``: dicts with ``n_strategy`` (or None, CSP), ``elapsed_seconds``, ``generated`` and ``valid``.
    """
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5, 3.6))
    strategies = sorted({str(batch.get('n_strategy') or 'csp') for batch in batches})
    for strategy in strategies:
        rows = [batch for batch in batches if str(batch.get('n_strategy') or 'csp') == strategy]
        times = [batch['elapsed_seconds'] / 60 for batch in rows]
        rates = [100 * batch['valid'] / batch['generated'] if batch['generated'] else 0.0 for batch in rows]
        axis.plot(times, rates, 'o-', label=strategy)
    axis.set(xlabel='time since start (min)', ylabel='valid after screening (%)', ylim=(-2, 102))
    axis.grid(alpha=0.3)
    axis.legend(title='N strategy', fontsize=8)
    _save(figure, plt, path)


def element_heatmap(counts: dict[str, int], path: str | pathlib.Path) -> None:
    """How many structures hold each element, as a periodic-table heat map (Fig. 7a); empty cells are elements
    that never occur."""
    plt = _pyplot()
    grid = np.full((9, 18), np.nan)
    for symbol, count in counts.items():
        row, column = periodic_table_position(symbol)
        grid[row - 1, column - 1] = count
    figure, axis = plt.subplots(figsize=(9, 4.6))
    image = axis.imshow(np.ma.masked_invalid(grid), cmap='viridis', vmin=0)
    figure.colorbar(image, ax=axis, label='structures containing the element', shrink=0.8)
    for z in range(1, 104):  # the whole table in grey, so that absent elements are seen as absent
        symbol = Element.from_Z(z).symbol
        row, column = periodic_table_position(symbol)
        present = symbol in counts
        if not present:
            axis.add_patch(plt.Rectangle((column - 1.5, row - 1.5), 1, 1, color='0.93', ec='white'))
        axis.text(
            column - 1, row - 1, symbol, ha='center', va='center', fontsize=6, color='white' if present else '0.6'
        )
    axis.set(xticks=[], yticks=[], title='element occurrence')
    _save(figure, plt, path)


def atoms_per_cell_plot(counts: dict[str, int], path: str | pathlib.Path) -> None:
    """Number of structures per atom count of the cell (Fig. 7b)."""
    plt = _pyplot()
    sizes = sorted(counts, key=int)
    figure, axis = plt.subplots(figsize=(5, 3.6))
    axis.bar([int(size) for size in sizes], [counts[size] for size in sizes], color='tab:blue')
    axis.set(xlabel='atoms per cell', ylabel='structures')
    axis.grid(alpha=0.3, axis='y')
    _save(figure, plt, path)


def crystal_systems_plot(counts: dict[str, int], path: str | pathlib.Path) -> None:
    """Number of structures per crystal system, all seven shown (Fig. 7c)."""
    plt = _pyplot()
    names = [*CRYSTAL_SYSTEMS, *(['unknown'] if counts.get('unknown') else [])]
    figure, axis = plt.subplots(figsize=(5.6, 3.6))
    axis.bar(range(len(names)), [counts.get(name, 0) for name in names], color='tab:orange')
    axis.set_xticks(range(len(names)), names, rotation=30, ha='right')
    axis.set(ylabel='structures')
    axis.grid(alpha=0.3, axis='y')
    _save(figure, plt, path)


def property_distributions(
    surrogate: Sequence[float], dft: Sequence[float], path: str | pathlib.Path, label: str = '', units: str = ''
) -> None:
    """Histograms of a property as the surrogate predicted it and as DFT computed it (Fig. 8); NaN left out."""
    plt = _pyplot()
    surrogate, dft = np.asarray(surrogate, float), np.asarray(dft, float)
    surrogate, dft = surrogate[np.isfinite(surrogate)], dft[np.isfinite(dft)]
    figure, axis = plt.subplots(figsize=(5, 3.6))
    values = np.concatenate([surrogate, dft])
    bins = np.histogram_bin_edges(values, bins=min(30, max(5, len(values)))) if len(values) else 10
    axis.hist(surrogate, bins=bins, alpha=0.6, label=f'surrogate (n = {len(surrogate)})')
    axis.hist(dft, bins=bins, alpha=0.6, label=f'DFT (n = {len(dft)})')
    axis.set(xlabel=f'{label} ({units})' if units else label, ylabel='structures')
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    _save(figure, plt, path)
