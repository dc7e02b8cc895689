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
An engine may carry constants of its own, fitted to MP's formation energies of compounds it ran with MP's U values
(:func:`fit_gga_u_constants`, ``engine_constants``): a compound whose every +U metal has one is then on the scale
too. Otherwise the record says it is not (``on_mp_scale``). The classification (oxide or peroxide from O-O
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
    structure,
    scheme: str = 'mp2020',
    hubbard_u: dict[str, float] | None = None,
    constants_apply: bool = True,
    engine_constants: dict[str, float] | None = None,
) -> dict:
    """The corrections of ``structure`` (pymatgen ``Structure``) under ``scheme``, for a run with ``hubbard_u``.

    ``hubbard_u`` (element -> U in eV) is what the calculation applied; ``None`` or ``{}``: plain GGA.
    ``constants_apply``: whether MP's GGA/GGA+U constants describe the engine's +U energies (see the module).
    ``engine_constants``: where they do not, the engine's own (element -> eV per atom of it), used instead of MP's
    when they cover every +U metal of the compound.
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
    own = bool(expected) and mp_u and not constants_apply and set(expected) <= set(engine_constants or {})
    record['adjustments'] = [
        {'name': adjustment.name, 'per_atom': adjustment.value / natoms}
        for adjustment in adjustments
        if 'anion correction' in adjustment.name or (mp_u and not own and 'GGA+U mixing correction' in adjustment.name)
    ]
    if own:
        amounts = structure.composition.get_el_amt_dict()
        record['adjustments'] += [
            {
                'name': f'{ENGINE_CONSTANT_NAME} ({element})',
                'per_atom': engine_constants[element] * amounts[element] / natoms,
            }
            for element in sorted(expected)
        ]
    record['per_atom'] = float(sum(item['per_atom'] for item in record['adjustments']))
    record['gga_u_elements'] = sorted(expected)
    record['on_mp_scale'] = mp_u and (constants_apply or own or not expected)
    return record


#: The name of an engine's own GGA/GGA+U constant among a record's adjustments.
ENGINE_CONSTANT_NAME = 'GGA/GGA+U mixing constant fitted for this engine'


def gga_u_constant_estimates(rows: list[dict]) -> list[dict]:
    """Each compound's estimate of its +U metal's constant: the eV per metal atom that puts its formation energy on
    the reference's scale, ``natoms * (reference - uncorrected - anion) / n_metal``.

    ``rows``: ``{'formula', 'element' (the one +U metal), 'natoms', 'n_element', 'formation_energy_uncorrected',
    'anion_per_atom' (the anion corrections of its record, eV/atom), 'reference' (MP's formation energy, eV/atom)}``.
    """
    return [
        {
            **row,
            'estimate': row['natoms']
            * (row['reference'] - row['formation_energy_uncorrected'] - row['anion_per_atom'])
            / row['n_element'],
        }
        for row in rows
    ]


def fit_gga_u_constants(rows: list[dict]) -> dict[str, dict]:
    """Per +U metal: the constant (the mean of its compounds' estimates, :func:`gga_u_constant_estimates`), and for
    each compound the error its formation energy keeps with the constant (value - reference, eV/atom) and, with two
    or more compounds, the leave-one-out error (the constant fitted without it): how well one constant per metal
    transfers."""
    fits: dict[str, dict] = {}
    estimates = gga_u_constant_estimates(rows)
    for element in sorted({row['element'] for row in estimates}):
        own = [row for row in estimates if row['element'] == element]
        constant = sum(row['estimate'] for row in own) / len(own)
        compounds = []
        for row in own:
            share = row['n_element'] / row['natoms']
            others = [other['estimate'] for other in own if other is not row]
            compounds.append(
                {
                    'formula': row['formula'],
                    'estimate': row['estimate'],
                    'error_per_atom': (constant - row['estimate']) * share,
                    'leave_one_out_error_per_atom': (sum(others) / len(others) - row['estimate']) * share
                    if others
                    else None,
                }
            )
        fits[element] = {'constant': constant, 'compounds': compounds}
    return fits


def on_mp_scale(record: dict) -> bool:
    """Whether an ``energy_corrections`` record describes a formation energy on MP's scale.

    Records made before ``on_mp_scale`` existed came from plain-GGA runs: on the scale unless MP uses +U there.
    """
    if record.get('scheme') != 'mp2020':
        return False
    return bool(record.get('on_mp_scale', not record.get('gga_u_elements')))
