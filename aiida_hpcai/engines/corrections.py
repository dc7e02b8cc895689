"""Energy corrections that put ``hpcai.dft`` formation energies on the Materials Project's scale.

The surrogate learns MP formation energies, and MP's are not raw GGA (``MaterialsProject2020Compatibility``):

* fitted constants per anion atom (oxide, peroxide, superoxide, sulfide, F, Cl, N, H, ...) correct GGA's errors
  for O2 and the like. Raw PBE for MgO is about 0.35 eV/atom above MP's value;
* oxides and fluorides of Co, Cr, Fe, Mn, Mo, Ni, V, W are run with GGA+U (MP's U values, :func:`mp_hubbard_u`)
  against plain-GGA elemental references, and a fitted constant per such metal atom makes the mix consistent.

Applying the same corrections here lets the coordinate loop compare its DFT results with the surrogate's
predictions, and fine-tune on them, on one scale. The +U constants only describe a calculation run with MP's U
values, and were fitted to MP's own VASP runs: they are added when the engine applied MP's U values (the
``hubbard_u`` it reports), but such a compound is on MP's scale only when the engine's +U energies are VASP's
(``constants_apply``; Quantum ESPRESSO's projectors give another U energy: NiO lands 0.48 eV/atom below MP).
Otherwise the record says it is not (``on_mp_scale``). The classification (oxide or peroxide from O-O
distances, anions from guessed oxidation states) is pymatgen's own, so it matches MP's.
"""

from __future__ import annotations

import functools
import math
import warnings

#: Accepted values of ``hpcai.dft``'s ``energy_correction`` input.
SCHEMES = ('mp2020', 'none')


@functools.lru_cache(maxsize=1)
def _mp2020():
    from pymatgen.entries.compatibility import MaterialsProject2020Compatibility

    return MaterialsProject2020Compatibility(check_potcar=False)


def mp_hubbard_u(structure) -> dict[str, float]:
    """The U values (eV, Dudarev) MP runs ``structure`` (pymatgen ``Structure``) with: element -> U, maybe empty.

    MP uses GGA+U when the most electronegative element is O or F and the compound holds one of the metals it sets
    a U for (never for an element); the values are those of ``MPRelaxSet``.
    """
    composition = structure.composition
    if len(composition.elements) < 2:
        return {}
    most_electronegative = max(composition.elements, key=lambda element: element.X).symbol
    settings = _mp2020().u_settings.get(most_electronegative, {})
    return {
        element.symbol: float(settings[element.symbol])
        for element in composition.elements
        if settings.get(element.symbol)
    }


def _same_u(applied: dict[str, float], expected: dict[str, float]) -> bool:
    return applied.keys() == expected.keys() and all(
        math.isclose(applied[element], expected[element], abs_tol=1e-6) for element in expected
    )


def energy_corrections(
    structure, scheme: str = 'mp2020', hubbard_u: dict[str, float] | None = None, constants_apply: bool = True
) -> dict:
    """The corrections of ``structure`` (pymatgen ``Structure``) under ``scheme``, for a run with ``hubbard_u``.

    ``hubbard_u`` (element -> U in eV) is what the calculation applied; ``None`` or ``{}``: plain GGA.
    ``constants_apply``: whether MP's GGA/GGA+U constants describe the engine's +U energies (see the module).
    Returns ``{'scheme', 'adjustments': [{'name', 'per_atom'}], 'per_atom', 'gga_u_elements', 'hubbard_u',
    'on_mp_scale'}`` with energies in eV per atom of the cell; ``per_atom`` is their sum, to be added to a formation
    energy per atom; ``gga_u_elements`` are the elements MP runs with +U here.
    """
    if scheme not in SCHEMES:
        raise ValueError(f'unknown energy correction {scheme!r}; choose one of {", ".join(SCHEMES)}')
    applied = {element: float(value) for element, value in (hubbard_u or {}).items() if value}
    record = {'scheme': scheme, 'adjustments': [], 'per_atom': 0.0, 'gga_u_elements': [], 'hubbard_u': applied}
    if scheme == 'none':
        record['on_mp_scale'] = False
        return record
    from pymatgen.entries.computed_entries import ComputedStructureEntry

    expected = mp_hubbard_u(structure)
    mp_u = _same_u(applied, expected)
    # MP's check refuses a compound it runs with +U unless the entry declares MP's own U values: declared here
    # either way, and the +U constants kept only when the run really applied them.
    entry = ComputedStructureEntry(
        structure,
        0.0,
        parameters={'run_type': 'GGA+U' if expected else 'GGA', 'software': 'hpcai', 'hubbards': expected},
    )
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # "failed to guess oxidation states": pymatgen then uses electronegativity
        adjustments = _mp2020().get_adjustments(entry)
    natoms = structure.composition.num_atoms
    record['adjustments'] = [
        {'name': adjustment.name, 'per_atom': adjustment.value / natoms}
        for adjustment in adjustments
        if 'anion correction' in adjustment.name or (mp_u and 'GGA+U mixing correction' in adjustment.name)
    ]
    record['per_atom'] = float(sum(item['per_atom'] for item in record['adjustments']))
    record['gga_u_elements'] = sorted(expected)
    record['on_mp_scale'] = mp_u and (constants_apply or not expected)
    return record


def on_mp_scale(record: dict) -> bool:
    """Whether an ``energy_corrections`` record describes a formation energy on MP's scale.

    Records made before ``on_mp_scale`` existed came from plain-GGA runs: on the scale unless MP uses +U there.
    """
    if record.get('scheme') != 'mp2020':
        return False
    return bool(record.get('on_mp_scale', not record.get('gga_u_elements')))
