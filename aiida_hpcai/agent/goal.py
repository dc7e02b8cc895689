"""The Goal: what a materials request asks for, in a form every other tool can rely on.

A planner (the deterministic one in :mod:`aiida_hpcai.agent.planner`, or an LLM in
:mod:`aiida_hpcai.agent.llm`) turns request text into a :class:`Goal`; the coordinate pattern reads it.
The fields and their meaning are documented in docs/source/planner.md.
"""

from __future__ import annotations

import functools
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# The properties a bound or an objective can name, with the units their values are in.
PROPERTY_UNITS = {
    'formation_energy_per_atom': 'eV/atom',
    'energy_above_hull': 'eV/atom',
    'band_gap': 'eV',
}
# A band gap and a distance to the convex hull are never negative.
NON_NEGATIVE_PROPERTIES = ('energy_above_hull', 'band_gap')
CRYSTAL_SYSTEMS = ('triclinic', 'monoclinic', 'orthorhombic', 'tetragonal', 'trigonal', 'hexagonal', 'cubic')
# DFT calculations the loop may start when the request names no budget: the paper's Fe2O3 request
# needed 5 (docs/source/planner.md); a request asks for more, or for none, in words.
DEFAULT_DFT_BUDGET = 5

PropertyName = Literal['formation_energy_per_atom', 'energy_above_hull', 'band_gap']
Bound = tuple[float | None, float | None]


@functools.cache
def kj_per_mol_per_ev() -> float:
    """1 eV per particle in kJ per mole (e * N_A / 1000 = 96.485...)."""
    from scipy.constants import Avogadro, elementary_charge

    return elementary_charge * Avogadro / 1000


class PlanError(ValueError):
    """A request that cannot become a valid Goal: why, and the words that could not be placed."""

    def __init__(self, message: str, unparsed: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.unparsed = list(unparsed or [])

    def as_dict(self) -> dict:
        return {'error': {'message': self.message, 'unparsed': self.unparsed}}


@functools.cache
def element_symbols() -> frozenset[str]:
    """The 118 element symbols (pymatgen's periodic table; no isotopes such as D)."""
    from pymatgen.core.periodic_table import Element

    return frozenset(element.symbol for element in Element)


def check_element(symbol: str) -> str:
    if symbol not in element_symbols():
        raise ValueError(f'unknown element {symbol!r}')
    return symbol


def _normalise_symbol(symbol: str) -> str:
    return symbol.replace('_', '').replace(' ', '')


@functools.cache
def _spacegroup_numbers() -> dict[str, int]:
    """International symbol (short and full, with or without ``_`` and spaces) -> number, from spglib's tables."""
    import spglib

    numbers = {}
    for hall_number in range(1, 531):  # spglib numbers the 530 Hall settings of the 230 space groups
        entry = spglib.get_spacegroup_type(hall_number)
        for symbol in (entry.international_short, entry.international_full):
            numbers[_normalise_symbol(symbol)] = entry.number
    return numbers


def spacegroup_number(symbol: str) -> int:
    """The international number of a Hermann-Mauguin symbol such as ``Fm-3m``, ``P6_3/mmc`` or ``P63/mmc``."""
    number = _spacegroup_numbers().get(_normalise_symbol(symbol))
    if number is None:
        raise ValueError(f'unknown space group symbol {symbol!r}')
    return number


def crystal_system_of(spacegroup: int) -> str:
    from pymatgen.symmetry.groups import SpaceGroup

    return SpaceGroup.from_int_number(spacegroup).crystal_system


_FORMULA_ELEMENT = re.compile(r'[A-Z][a-z]?')


def reduced_formula(formula: str) -> str:
    """pymatgen's reduced formula of ``formula``; unknown elements and fractional amounts are refused."""
    from pymatgen.core import Composition

    for symbol in _FORMULA_ELEMENT.findall(formula):
        check_element(symbol)
    try:
        composition = Composition(formula)
    except ValueError as exception:
        raise ValueError(f'{formula!r} is not a chemical formula') from exception
    if any(amount != int(amount) for amount in composition.get_el_amt_dict().values()):
        raise ValueError(f'{formula!r} has fractional amounts; give a formula with whole numbers of atoms')
    return composition.reduced_formula


def formula_elements(formula: str) -> set[str]:
    from pymatgen.core import Composition

    return {element.symbol for element in Composition(formula).elements}


class Goal(BaseModel):
    """A materials request as data.

    composition: reduced formula every result must have, or None.
    chemsys: the elements of every result, exactly (as Materials Project's ``chemsys``): sorted
        alphabetically and joined by ``-``, or None.
    must_include / exclude: elements every result must contain / must not contain (sorted, unique).
    count: how many distinct results are wanted (at most), or None for as many as are found.
    bounds: {property: [min or None, max or None]}, closed intervals, in eV/atom
        (formation_energy_per_atom, energy_above_hull) or eV (band_gap); a metal is a band gap of [0, 0].
    spacegroup: international number (1-230) or None; crystal_system: lower-case name or None.
    objective: [``minimize`` | ``maximize``, property] to rank results by, or None.
    dft_budget: how many DFT calculations the loop may start.
    """

    model_config = ConfigDict(extra='forbid', frozen=True, allow_inf_nan=False)

    composition: str | None = None
    chemsys: str | None = None
    must_include: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)
    count: Annotated[int, Field(strict=True, gt=0)] | None = None
    bounds: dict[PropertyName, Bound] = Field(default_factory=dict)
    spacegroup: Annotated[int, Field(strict=True, ge=1, le=230)] | None = None
    crystal_system: Literal[CRYSTAL_SYSTEMS] | None = None
    objective: tuple[Literal['minimize', 'maximize'], PropertyName] | None = None
    dft_budget: Annotated[int, Field(strict=True, ge=0)] = DEFAULT_DFT_BUDGET

    @field_validator('composition')
    @classmethod
    def _composition(cls, value):
        return None if value is None else reduced_formula(value)

    @field_validator('chemsys', mode='before')
    @classmethod
    def _chemsys(cls, value):
        if value is None:
            return None
        symbols = value.split('-') if isinstance(value, str) else list(value)
        if len(set(symbols)) != len(symbols):
            raise ValueError(f'chemsys {value!r} names an element twice')
        return '-'.join(sorted(check_element(symbol) for symbol in symbols))

    @field_validator('must_include', 'exclude')
    @classmethod
    def _elements(cls, value):
        return sorted({check_element(symbol) for symbol in value})

    @field_validator('spacegroup', mode='before')
    @classmethod
    def _spacegroup(cls, value):
        return spacegroup_number(value) if isinstance(value, str) else value

    @field_validator('crystal_system', mode='before')
    @classmethod
    def _crystal_system(cls, value):
        return value.lower() if isinstance(value, str) else value

    @field_validator('bounds')
    @classmethod
    def _bounds(cls, value):
        for name, (low, high) in value.items():
            if low is None and high is None:
                raise ValueError(f'the bound on {name} gives neither a minimum nor a maximum')
            if low is not None and high is not None and low > high:
                raise ValueError(f'contradictory bounds on {name}: minimum {low} is above maximum {high}')
            if name in NON_NEGATIVE_PROPERTIES and any(v is not None and v < 0 for v in (low, high)):
                raise ValueError(f'{name} is never negative; its bounds cannot be ({low}, {high})')
        return value

    @model_validator(mode='after')
    def _consistent(self):
        include, exclude = set(self.must_include), set(self.exclude)
        if include & exclude:
            raise ValueError(f'elements both required and excluded: {", ".join(sorted(include & exclude))}')
        if self.composition is not None:
            elements = formula_elements(self.composition)
            if elements & exclude:
                raise ValueError(f'{self.composition} contains excluded {", ".join(sorted(elements & exclude))}')
            if include - elements:
                raise ValueError(f'{self.composition} has no {", ".join(sorted(include - elements))}')
            if self.chemsys is not None and elements != set(self.chemsys.split('-')):
                raise ValueError(f'{self.composition} is not in the chemical system {self.chemsys}')
        if self.chemsys is not None:
            elements = set(self.chemsys.split('-'))
            if elements & exclude:
                raise ValueError(
                    f'the chemical system {self.chemsys} contains excluded {", ".join(sorted(elements & exclude))}'
                )
            if include - elements:
                raise ValueError(f'the chemical system {self.chemsys} has no {", ".join(sorted(include - elements))}')
        if self.spacegroup is not None and self.crystal_system is not None:
            system = crystal_system_of(self.spacegroup)
            if system != self.crystal_system:
                raise ValueError(f'space group {self.spacegroup} is {system}, not {self.crystal_system}')
        return self

    def has_request(self) -> bool:
        """Whether the goal asks for anything at all (a budget alone is no materials request)."""
        return any(
            (
                self.composition,
                self.chemsys,
                self.must_include,
                self.exclude,
                self.count,
                self.bounds,
                self.spacegroup,
                self.crystal_system,
                self.objective,
            )
        )


def goal_from_dict(data: dict) -> Goal:
    """Validate ``data`` into a Goal; every validation failure becomes one readable PlanError."""
    try:
        return Goal.model_validate(data)
    except ValidationError as exception:
        reasons = []
        for error in exception.errors():
            where = '.'.join(str(part) for part in error['loc'])
            message = error['msg'].removeprefix('Value error, ')
            reasons.append(f'{where}: {message}' if where else message)
        raise PlanError('not a valid goal: ' + '; '.join(reasons)) from None
