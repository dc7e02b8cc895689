"""Fixed per-element input features: a "k-hot" vector of binned physical properties.

Every element Z = 1..100 gets the concatenation of one-hot segments, one per property:

==========================  ====================================  ======
property                    bins                                  source
==========================  ====================================  ======
group                       1..18                                 pymatgen ``Element.group``
period                      1..7                                  ``Element.row``
electronegativity (Pauling) 10 equal bins on [0.7, 4.0]           ``Element.X``
covalent radius (A)         10 equal bins on [0.25, 2.5]          pymatgen ``CovalentRadius``
valence electrons           1..12 (more -> 12)                    from group and block, see below
first ionization energy eV  10 bins, log-spaced on [3.5, 25]      ``Element.ionization_energies[0]``
electron affinity (eV)      10 equal bins on [-1.0, 3.7]          ``Element.electron_affinity``
block                       s, p, d, f                            ``Element.block``
atomic (molar) volume       10 bins, log-spaced on [4, 75] cm3    ``Element.molar_volume``
==========================  ====================================  ======

Each segment carries one extra "unknown" bin that is set where pymatgen has no value (for
example the covalent radius of Fm), so a missing value is a visible feature rather than a zero
vector. The table is computed once with pymatgen and shipped as ``element_features.npy`` beside
this module, so that the model program on a compute node needs no pymatgen and no per-structure
look-ups; :func:`build_element_table` regenerates it (a test checks the two agree).
"""

from __future__ import annotations

import functools
import pathlib
import warnings

import numpy as np

MAX_ATOMIC_NUMBER = 100
TABLE_FILE = pathlib.Path(__file__).with_name('element_features.npy')

# (name, kind, spec): kind 'category' -> spec is the list of admissible values;
# 'linear'/'log' -> spec is (low, high, n_bins), values outside are clipped into the end bins.
SEGMENTS: tuple[tuple[str, str, object], ...] = (
    ('group', 'category', tuple(range(1, 19))),
    ('period', 'category', tuple(range(1, 8))),
    ('electronegativity', 'linear', (0.7, 4.0, 10)),
    ('covalent_radius', 'linear', (0.25, 2.5, 10)),
    ('valence_electrons', 'category', tuple(range(1, 13))),
    ('first_ionization_energy', 'log', (3.5, 25.0, 10)),
    ('electron_affinity', 'linear', (-1.0, 3.7, 10)),
    ('block', 'category', ('s', 'p', 'd', 'f')),
    ('atomic_volume', 'log', (4.0, 75.0, 10)),
)


def segment_sizes() -> list[int]:
    """Width of each segment, the unknown bin included."""
    sizes = []
    for _, kind, spec in SEGMENTS:
        sizes.append((len(spec) if kind == 'category' else spec[2]) + 1)
    return sizes


NUM_FEATURES = sum(segment_sizes())


def _valence_electrons(element) -> int | None:
    """Electrons outside the last closed shell, by group for s/p/d and approximately for f."""
    group, block = element.group, element.block
    if block == 's':
        return 2 if element.Z == 2 else group
    if block == 'p':
        return min(group - 10, 12) if group > 12 else None
    if block == 'd':
        return min(group, 12)
    if block == 'f':
        try:
            electrons = sum(
                count for (_, orbital, count) in element.full_electronic_structure[-3:] if orbital in ('s', 'd', 'f')
            )
        except Exception:  # noqa: BLE001 - pymatgen lacks data for a few heavy elements
            return None
        return min(electrons, 12)
    return None


def _element_properties(z: int) -> dict[str, object]:
    from pymatgen.analysis.molecule_structure_comparator import CovalentRadius
    from pymatgen.core.periodic_table import Element

    element = Element.from_Z(z)

    def safe(getter):
        try:
            value = getter()
        except Exception:  # noqa: BLE001 - pymatgen raises various errors for missing data
            return None
        if value is None:
            return None
        if isinstance(value, str):
            return value
        value = float(value)
        return None if np.isnan(value) else value

    return {
        'group': safe(lambda: element.group),
        'period': safe(lambda: element.row),
        'electronegativity': safe(lambda: element.X),
        'covalent_radius': safe(lambda: CovalentRadius.radius.get(element.symbol)),
        'valence_electrons': safe(lambda: _valence_electrons(element)),
        'first_ionization_energy': safe(lambda: element.ionization_energies[0]),
        'electron_affinity': safe(lambda: element.electron_affinity),
        'block': safe(lambda: element.block),
        'atomic_volume': safe(lambda: element.molar_volume),
    }


def _encode(value, kind: str, spec) -> np.ndarray:
    if kind == 'category':
        out = np.zeros(len(spec) + 1, dtype=np.float32)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        out[spec.index(value) if value in spec else len(spec)] = 1.0
        return out
    low, high, n_bins = spec
    out = np.zeros(n_bins + 1, dtype=np.float32)
    if value is None:
        out[n_bins] = 1.0
        return out
    if kind == 'log':
        value, low, high = np.log(max(value, 1e-12)), np.log(low), np.log(high)
    index = int(np.clip(np.floor((value - low) / (high - low) * n_bins), 0, n_bins - 1))
    out[index] = 1.0
    return out


def build_element_table() -> np.ndarray:
    """Compute the (MAX_ATOMIC_NUMBER + 1, NUM_FEATURES) table with pymatgen; row 0 is unused."""
    table = np.zeros((MAX_ATOMIC_NUMBER + 1, NUM_FEATURES), dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        for z in range(1, MAX_ATOMIC_NUMBER + 1):
            properties = _element_properties(z)
            table[z] = np.concatenate([_encode(properties[name], kind, spec) for name, kind, spec in SEGMENTS])
    return table


@functools.lru_cache(maxsize=1)
def element_table() -> np.ndarray:
    """The shipped table (computed and written beside the module if it is missing)."""
    if TABLE_FILE.exists():
        table = np.load(TABLE_FILE, allow_pickle=False)
        if table.shape == (MAX_ATOMIC_NUMBER + 1, NUM_FEATURES):
            return table
    table = build_element_table()
    try:
        np.save(TABLE_FILE, table)
    except OSError:  # read-only install: keep it in memory only
        pass
    return table


def element_features(numbers) -> np.ndarray:
    """Feature rows for atomic numbers ``numbers`` (each must be in 1..MAX_ATOMIC_NUMBER)."""
    numbers = np.asarray(numbers, dtype=np.int64)
    if numbers.size and (numbers.min() < 1 or numbers.max() > MAX_ATOMIC_NUMBER):
        raise ValueError(f'atomic numbers must lie in 1..{MAX_ATOMIC_NUMBER}')
    return element_table()[numbers]
