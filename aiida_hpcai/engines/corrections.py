"""Energy corrections that put ``hpcai.dft`` formation energies on the Materials Project's scale.

The surrogate learns MP formation energies, and MP's are not raw GGA: MP adds fitted constants per anion
atom (oxide, peroxide, superoxide, sulfide, F, Cl, N, H, ...) to correct GGA's errors for O2 and the like
(``MaterialsProject2020Compatibility``). Raw PBE for MgO is therefore about 0.35 eV/atom above MP's value.
Applying the same anion corrections here lets the coordinate loop compare its DFT results with the
surrogate's predictions, and fine-tune on them, on one scale.

Only the anion corrections apply: MP also runs oxides and fluorides of Co, Cr, Fe, Mn, Mo, Ni, V, W with
GGA+U and shifts them by fitted per-metal constants, which describe a +U calculation; our engines run plain
GGA, so for those compounds the corrected value is still not on MP's scale, and the record says so
(``gga_u_elements``). The classification (oxide or peroxide from O-O distances, anions from guessed
oxidation states) is pymatgen's own, so it matches MP's.
"""

from __future__ import annotations

import functools
import warnings

#: Accepted values of ``hpcai.dft``'s ``energy_correction`` input.
SCHEMES = ('mp2020', 'none')


@functools.lru_cache(maxsize=1)
def _mp2020():
    from pymatgen.entries.compatibility import MaterialsProject2020Compatibility

    return MaterialsProject2020Compatibility(check_potcar=False)


def anion_corrections(structure, scheme: str = 'mp2020') -> dict:
    """The anion corrections of ``structure`` (pymatgen ``Structure``) under ``scheme``.

    Returns ``{'scheme', 'adjustments': [{'name', 'per_atom'}], 'per_atom', 'gga_u_elements'}`` with energies in
    eV per atom of the cell; ``per_atom`` is their sum, to be added to a formation energy per atom.
    """
    if scheme not in SCHEMES:
        raise ValueError(f'unknown energy correction {scheme!r}; choose one of {", ".join(SCHEMES)}')
    record = {'scheme': scheme, 'adjustments': [], 'per_atom': 0.0, 'gga_u_elements': []}
    if scheme == 'none':
        return record
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    compatibility = _mp2020()
    composition = structure.composition
    # MP runs a compound with GGA+U when its most electronegative element is O or F and it holds one of the
    # metals MP sets a U for (none in an element).
    most_electronegative = max(composition.elements, key=lambda element: element.X).symbol
    settings = compatibility.u_settings.get(most_electronegative, {}) if len(composition.elements) > 1 else {}
    # Declaring MP's own U values gets past its check for a GGA+U run; the +U constants it then adds are
    # dropped below, since our runs are plain GGA.
    hubbards = {
        element.symbol: settings[element.symbol] for element in composition.elements if settings.get(element.symbol)
    }
    entry = ComputedStructureEntry(
        structure,
        0.0,
        parameters={'run_type': 'GGA+U' if hubbards else 'GGA', 'software': 'hpcai', 'hubbards': hubbards},
    )
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # "failed to guess oxidation states": pymatgen then uses electronegativity
        adjustments = compatibility.get_adjustments(entry)
    natoms = composition.num_atoms
    record['adjustments'] = [
        {'name': adjustment.name, 'per_atom': adjustment.value / natoms}
        for adjustment in adjustments
        if 'anion correction' in adjustment.name
    ]
    record['per_atom'] = float(sum(item['per_atom'] for item in record['adjustments']))
    record['gga_u_elements'] = sorted(hubbards)
    return record
