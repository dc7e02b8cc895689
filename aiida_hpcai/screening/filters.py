"""Validity filters for candidate crystal structures: pure functions on pymatgen ``Structure`` objects.

No AiiDA here (the AiiDA layer is :mod:`aiida_hpcai.screening.calcfunctions`), so the filters can screen
a generator's output anywhere. Every test is delegated to the library that owns it:

- element count: ``Composition.elements`` (pymatgen);
- minimum interatomic distance, periodic images included: ``Structure.get_neighbor_list`` (pymatgen);
- charge neutrality with oxidation states (and, by default, the Pauling electronegativity test; pure
  metals and intermetallics pass as alloys): :func:`smact.screening.smact_validity`, as in CDVAE, DiffCSP
  and EquiCSP's "composition validity";
- space group (a candidate without any symmetry, P1, is rejected): spglib through pymatgen's
  ``SpacegroupAnalyzer``;
- duplicates within the batch and against known structures: pymatgen's ``StructureMatcher`` (primitive
  cells, so a supercell or a rotated copy is a duplicate), known structures pre-selected by
  :func:`fingerprint` (reduced formula, space group, volume per atom).

:func:`screen` runs them in that order (cheap tests first) and records, for each rejected structure,
the first filter it failed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

__all__ = (
    'FINGERPRINT_SYMPREC',
    'REASONS',
    'Rejection',
    'ScreeningParameters',
    'ScreeningResult',
    'charge_neutral',
    'fingerprint',
    'fingerprints_match',
    'minimum_distance',
    'screen',
    'space_group',
)

#: Rejection reasons, in the order :func:`screen` tests them.
REASONS = (
    'too_many_elements',
    'atoms_too_close',
    'not_charge_neutral',
    'no_symmetry',
    'duplicate_in_batch',
    'duplicate_of_known',
)

#: spglib tolerance (Å) of the space group in :func:`fingerprint`; fixed, whatever the screening's
#: ``symprec``, so that fingerprints stored in a profile and those of new candidates are comparable.
FINGERPRINT_SYMPREC = 0.1


@dataclasses.dataclass(frozen=True)
class ScreeningParameters:
    """What :func:`screen` tests. Build from a (user) mapping with :meth:`from_dict`."""

    max_elements: int | None = 10
    """Most distinct elements in a structure; ``None`` for no limit."""
    min_distance: float | None = 0.5
    """Smallest allowed distance (Å) between two atoms, periodic images included; ``None``: not tested."""
    charge_neutrality: bool = True
    """Test charge neutrality with SMACT oxidation states (``smact_validity``)."""
    use_pauling_test: bool = True
    """SMACT: also require the oxidation states to follow Pauling electronegativities."""
    include_alloys: bool = True
    """SMACT: compositions of metals only are valid (alloys, intermetallics)."""
    oxidation_states_set: str | None = None
    """SMACT oxidation-state set (e.g. ``'smact14'``, ``'icsd24'``); ``None``: SMACT's default (ICSD 2024 filter)."""
    reject_p1: bool = True
    """Reject structures whose space group is P1 (number 1) at ``symprec``."""
    symprec: float = 0.1
    """spglib distance tolerance (Å) of the symmetry filter."""
    angle_tolerance: float = 5.0
    """spglib angle tolerance (degrees) of the symmetry filter."""
    deduplicate: bool = True
    """Reject duplicates within the batch (the first of each group is kept) and of the known structures."""
    ltol: float = 0.2
    """StructureMatcher fractional length tolerance."""
    stol: float = 0.3
    """StructureMatcher site tolerance (fraction of the average free length per atom)."""
    angle_tol: float = 5.0
    """StructureMatcher angle tolerance (degrees)."""
    volume_tolerance: float = 0.2
    """Known structures are compared when their volume per atom is within this fraction of the candidate's."""

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> ScreeningParameters:
        """Defaults updated with ``values``; ``ValueError`` for an unknown key or an out-of-range value."""
        values = dict(values or {})
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f'unknown screening parameter(s): {", ".join(unknown)}; known: {", ".join(sorted(known))}')
        parameters = cls(**values)
        if parameters.max_elements is not None and parameters.max_elements < 1:
            raise ValueError('max_elements must be at least 1')
        for name in ('min_distance', 'symprec', 'ltol', 'stol', 'angle_tol', 'volume_tolerance'):
            value = getattr(parameters, name)
            if value is not None and value < 0:
                raise ValueError(f'{name} must not be negative')
        return parameters

    def matcher(self) -> StructureMatcher:
        return StructureMatcher(ltol=self.ltol, stol=self.stol, angle_tol=self.angle_tol)


@dataclasses.dataclass(frozen=True)
class Rejection:
    index: int
    id: str
    reason: str
    """One of :data:`REASONS`."""
    detail: str


@dataclasses.dataclass
class ScreeningResult:
    valid: list[int]
    """Indices of the structures that passed, in input order."""
    rejected: list[Rejection]

    def counts(self) -> dict[str, int]:
        """Rejections per reason, every reason of :data:`REASONS` present."""
        counts = dict.fromkeys(REASONS, 0)
        for rejection in self.rejected:
            counts[rejection.reason] += 1
        return counts


# -- single filters ---------------------------------------------------------------------------------
def minimum_distance(structure: Structure, cutoff: float) -> float | None:
    """The shortest interatomic distance (Å, periodic images included) if below ``cutoff``, else ``None``."""
    _, _, _, distances = structure.get_neighbor_list(r=cutoff)
    return float(distances.min()) if len(distances) else None


def charge_neutral(structure: Structure, parameters: ScreeningParameters = ScreeningParameters()) -> bool:
    """Whether SMACT finds a charge-neutral assignment of oxidation states (``smact_validity``)."""
    from smact.screening import smact_validity

    return bool(
        smact_validity(
            structure.composition,
            use_pauling_test=parameters.use_pauling_test,
            include_alloys=parameters.include_alloys,
            oxidation_states_set=parameters.oxidation_states_set,
        )
    )


def space_group(structure: Structure, symprec: float = 0.1, angle_tolerance: float = 5.0) -> tuple[int, str]:
    """The space group (number, international symbol) spglib finds at the given tolerances."""
    analyzer = SpacegroupAnalyzer(structure, symprec=symprec, angle_tolerance=angle_tolerance)
    return analyzer.get_space_group_number(), analyzer.get_space_group_symbol()


def fingerprint(structure: Structure) -> dict[str, Any]:
    """A cheap key to pre-select possible duplicates: reduced formula, space group, volume per atom (Å^3)."""
    number, _ = space_group(structure, symprec=FINGERPRINT_SYMPREC)
    return {
        'reduced_formula': structure.composition.reduced_formula,
        'space_group': number,
        'volume_per_atom': float(structure.volume / len(structure)),
    }


def fingerprints_match(first: dict, second: dict, volume_tolerance: float) -> bool:
    """Same reduced formula and space group, volumes per atom within ``volume_tolerance`` (a fraction)."""
    return (
        first['reduced_formula'] == second['reduced_formula']
        and first['space_group'] == second['space_group']
        and abs(first['volume_per_atom'] - second['volume_per_atom'])
        <= volume_tolerance * max(first['volume_per_atom'], second['volume_per_atom'])
    )


# -- the whole screening ------------------------------------------------------------------------------
def _first_failure(structure: Structure, parameters: ScreeningParameters) -> tuple[str, str] | None:
    elements = structure.composition.elements
    if parameters.max_elements is not None and len(elements) > parameters.max_elements:
        return 'too_many_elements', f'{len(elements)} distinct elements (at most {parameters.max_elements})'
    if parameters.min_distance is not None:
        shortest = minimum_distance(structure, parameters.min_distance)
        if shortest is not None:
            return 'atoms_too_close', f'two atoms {shortest:.3f} Å apart (at least {parameters.min_distance} Å)'
    if parameters.charge_neutrality and not charge_neutral(structure, parameters):
        formula = structure.composition.reduced_formula
        return 'not_charge_neutral', f'SMACT finds no charge-neutral oxidation states for {formula}'
    if parameters.reject_p1:
        number, _ = space_group(structure, parameters.symprec, parameters.angle_tolerance)
        if number == 1:
            return 'no_symmetry', f'space group P1 at symprec {parameters.symprec} Å'
    return None


def screen(
    structures: Sequence[Structure],
    ids: Sequence[str] | None = None,
    parameters: ScreeningParameters = ScreeningParameters(),
    known: Sequence[tuple[str, Structure]] = (),
) -> ScreeningResult:
    """Screen ``structures``; ``known`` are ``(name, structure)`` pairs a candidate must not duplicate.

    Each structure is rejected for the first filter it fails (order of :data:`REASONS`). Within the batch
    the first structure of each group of duplicates is kept. Only known structures whose :func:`fingerprint`
    matches a candidate's are given to the StructureMatcher.
    """
    ids = [str(index) for index in range(len(structures))] if ids is None else [str(i) for i in ids]
    if len(ids) != len(structures):
        raise ValueError('ids and structures differ in length')
    rejected: list[Rejection] = []
    survivors: list[int] = []
    for index, structure in enumerate(structures):
        failure = _first_failure(structure, parameters)
        if failure is None:
            survivors.append(index)
        else:
            rejected.append(Rejection(index, ids[index], *failure))

    if parameters.deduplicate and survivors:
        matcher = parameters.matcher()
        kept: list[int] = []
        # group_structures returns the very objects it was given: map them back to their indices by identity
        # (of copies, in case one object was given twice).
        copies = [structures[index].copy() for index in survivors]
        index_of = {id(copy): index for copy, index in zip(copies, survivors)}
        for group in matcher.group_structures(copies):
            indices = sorted(index_of[id(member)] for member in group)
            kept.append(indices[0])
            for index in indices[1:]:
                rejected.append(
                    Rejection(index, ids[index], 'duplicate_in_batch', f'same structure as {ids[indices[0]]}')
                )
        survivors = sorted(kept)

        if known:
            known_prints = [(name, structure, fingerprint(structure)) for name, structure in known]
            kept = []
            for index in survivors:
                candidate_print = fingerprint(structures[index])
                match = next(
                    (
                        name
                        for name, structure, known_print in known_prints
                        if fingerprints_match(candidate_print, known_print, parameters.volume_tolerance)
                        and matcher.fit(structures[index], structure)
                    ),
                    None,
                )
                if match is None:
                    kept.append(index)
                else:
                    rejected.append(Rejection(index, ids[index], 'duplicate_of_known', f'same structure as {match}'))
            survivors = kept

    rejected.sort(key=lambda rejection: rejection.index)
    return ScreeningResult(valid=survivors, rejected=rejected)
