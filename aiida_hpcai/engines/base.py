"""The interface every DFT engine implements for the engine-agnostic ``hpcai.dft`` WorkChain.

The ``DftWorkChain`` (``aiida_hpcai/workchains/dft.py``) knows nothing about any DFT code. It asks an
:class:`EngineAdapter`, looked up by name with :func:`get_engine`, for four things:

1. **a protocol**: :meth:`EngineAdapter.load_protocol` reads the engine's YAML file (beside the adapter's
   module, path in :attr:`EngineAdapter.protocol_file`), merges ``default_inputs`` with the named protocol
   (``fast``, ``balanced``, ``precise``) and then with the user's overrides. An override key that the
   protocol does not have is an error (``ValueError``), except below keys named in
   :attr:`EngineAdapter.open_sections` (raw code input such as QE namelists or a VASP INCAR, where any
   tag is allowed). The result is a plain nested ``dict``; only the adapter interprets its keys.
   :meth:`EngineAdapter.molecular_crystal_protocol` may adapt it for molecular crystals (a coarser k-mesh).
2. **checks before any calculation**: :meth:`EngineAdapter.check_structure` returns the elements that
   have no pseudopotential / POTCAR in the protocol's family. The WorkChain exits with
   ``ERROR_MISSING_PSEUDOPOTENTIAL`` before launching anything when the list is not empty.
3. **builders**: :meth:`EngineAdapter.get_relax_builder` (variable-cell relaxation; positions only on request) and
   :meth:`EngineAdapter.get_scf_builder` (static SCF on the relaxed structure) return ``ProcessBuilder``\\ s
   of the engine's own WorkChains (aiida-quantumespresso ``PwRelaxWorkChain`` / ``PwBaseWorkChain``,
   aiida-vasp ``vasp.relax`` / ``vasp.vasp``), so each engine keeps its own restart handlers.
   ``options`` is the ``metadata.options`` dict of every CalcJob they launch (resources, wall time,
   ``withmpi``, queue, ...); adapters fill sensible defaults for what it lacks. ``magnetic_moments``
   (element -> initial μB per atom) decides spin polarization; ``None`` means the engine's default.
   :meth:`EngineAdapter.hubbard_u` says which U values (GGA+U) those runs apply, for the energy corrections.
4. **results**: :meth:`EngineAdapter.get_relaxed_structure` returns the relaxed ``StructureData``;
   :meth:`EngineAdapter.get_scf_result_nodes` picks the SCF child's output nodes and
   :meth:`EngineAdapter.scf_result_from_nodes` turns them into common values (:class:`ScfResult`, energies
   in eV) inside a calcfunction, so the common outputs keep their provenance; and
   :meth:`EngineAdapter.is_scf_unconverged` tells an electronic non-convergence (after the child's own
   restarts) apart from any other failure, so the WorkChain can report the right exit code.
   :func:`band_gap_from_eigenvalues` is the shared band-gap rule both engines use (pass it the number
   of electrons and the magnetization: counting bands is robust to smearing, reading occupations is not).

:meth:`EngineAdapter.identity` names what makes two calculations comparable: engine, protocol (name and
digest of the merged protocol, so overrides count) and pseudopotential (or POTCAR) family. Elemental
reference energies are stored and looked up under it, so a formation energy only ever combines energies
computed with the same identity.

Engines register in :data:`ENGINES` as ``'module:Class'`` strings, imported only when asked for, so
a missing optional engine plugin does not break the others. An adapter is stateless: it is instantiated
with no arguments and may be created anew at every step of a WorkChain.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
import hashlib
import importlib
import json
import pathlib
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import yaml

#: Engine name -> ``'module:Class'`` of its adapter (a subclass of :class:`EngineAdapter`).
ENGINES: dict[str, str] = {
    'quantumespresso': 'aiida_hpcai.engines.quantumespresso:QuantumEspressoEngine',
    'vasp': 'aiida_hpcai.engines.vasp:VaspEngine',
}

#: Elements started spin-polarized (ferromagnetic guess) by every engine.
MAGNETIC_ELEMENTS: frozenset[str] = frozenset({'V', 'Cr', 'Mn', 'Fe', 'Co', 'Ni'})
#: The engines' own GGA/GGA+U constants, fitted by ``python -m aiida_hpcai.engines.fit_gga_u`` (absent: none fitted).
GGA_U_CONSTANTS_FILE = pathlib.Path(__file__).parent / 'gga_u_constants.json'
#: The identity keys a fit of those constants holds for: the same pseudopotentials and merged protocol.
GGA_U_FIT_KEYS = ('engine', 'pseudo_family', 'protocol_digest')


def get_engine(name: str) -> EngineAdapter:
    """Return an instance of the adapter registered under ``name``; ``ValueError`` for an unknown name."""
    try:
        target = ENGINES[name]
    except KeyError as exception:
        raise ValueError(f'unknown DFT engine {name!r}; known engines: {", ".join(sorted(ENGINES))}') from exception
    module_name, class_name = target.split(':')
    return getattr(importlib.import_module(module_name), class_name)()


@dataclasses.dataclass(frozen=True)
class ScfResult:
    """What every engine reports from its static SCF run. Energies in eV, magnetization in Bohr magneton."""

    total_energy: float
    """Total energy of the cell (eV); for smearing, the energy the engine reports as its total energy."""
    number_of_atoms: int
    band_gap: float | None
    """From the run's eigenvalues and occupations (eV); ``0.0`` for a metal; ``None`` if not computable."""
    total_magnetization: float
    """Total magnetization of the cell (μB); ``0.0`` for a run without spin polarization."""
    converged: bool
    """Whether the SCF cycle converged (a finished-ok child should always report ``True``)."""
    fermi_energy: float | None = None

    @property
    def energy_per_atom(self) -> float:
        return self.total_energy / self.number_of_atoms


def band_gap_from_eigenvalues(
    eigenvalues: np.ndarray,
    occupations: np.ndarray | None = None,
    fermi_energy: float | None = None,
    max_occupation: float | None = None,
    *,
    number_of_electrons: float | None = None,
    total_magnetization: float = 0.0,
    fractional_tolerance: float = 0.05,
) -> float:
    """Return the fundamental band gap (eV) from eigenvalues on the k-point mesh of a static run.

    ``eigenvalues`` (eV) has shape ``(nkpoints, nbands)`` or ``(nspin, nkpoints, nbands)``. The gap is the
    lowest unoccupied minus the highest occupied eigenvalue over all spins and k-points, 0.0 when they
    overlap (a metal). On a k-point mesh this is an upper bound of the true gap when band edges fall
    between mesh points.

    Pass ``number_of_electrons`` (and for two spin channels ``total_magnetization``, μB): the lowest
    ``N/2`` bands (``(N±M)/2`` per spin) are the occupied ones, and a fractional band count means a metal.
    This is the rule engines should use. Reading occupations instead (a state counts as occupied above half
    of ``max_occupation``; or, without occupations, below ``fermi_energy``) fails with smearing on
    semiconductors: cold smearing puts the Fermi level just above the valence band maximum and leaves
    the top valence state half empty.
    """
    eigenvalues = np.asarray(eigenvalues, dtype=float)
    if number_of_electrons is not None:
        if eigenvalues.ndim == 2:
            channels = [(eigenvalues, number_of_electrons / 2)]
        else:
            half = (number_of_electrons + np.array([total_magnetization, -total_magnetization])) / 2
            channels = list(zip(eigenvalues, half))
        highest_occupied, lowest_unoccupied = -np.inf, np.inf
        for channel, filled in channels:
            if abs(filled - round(filled)) > fractional_tolerance:
                return 0.0
            filled = int(round(filled))
            if filled >= channel.shape[-1]:
                raise ValueError('cannot compute a band gap: no empty band was computed (too few bands)')
            if filled > 0:
                highest_occupied = max(highest_occupied, channel[:, filled - 1].max())
            lowest_unoccupied = min(lowest_unoccupied, channel[:, filled].min())
        return float(max(0.0, lowest_unoccupied - highest_occupied))

    if occupations is not None:
        occupations = np.asarray(occupations, dtype=float)
        if max_occupation is None:
            max_occupation = float(np.max(occupations)) if occupations.size else 1.0
            max_occupation = 2.0 if max_occupation > 1.0 + 1e-6 else 1.0
        occupied = occupations > 0.5 * max_occupation
    elif fermi_energy is not None:
        occupied = eigenvalues <= fermi_energy
    else:
        raise ValueError('band_gap_from_eigenvalues needs the number of electrons, occupations or a Fermi energy')

    if occupied.all() or not occupied.any():
        raise ValueError('cannot compute a band gap: all states are occupied or none is (too few bands?)')
    highest_occupied = eigenvalues[occupied].max()
    lowest_unoccupied = eigenvalues[~occupied].min()
    return float(max(0.0, lowest_unoccupied - highest_occupied))


def last_calculation(node):
    """The newest calculation job under the engine WorkChain ``node`` (the run that decided its end), or ``None``."""
    from aiida import orm

    calculations = [child for child in node.called_descendants if isinstance(child, orm.CalcJobNode)]
    return max(calculations, key=lambda child: child.ctime) if calculations else None


def failure_cause(node) -> str:
    """Why the engine WorkChain ``node`` failed, said by its last calculation job (for ``hpcai.dft``'s messages).

    The WorkChain's own exit status (e.g. PwBaseWorkChain's 402, "unhandled failure") does not say what happened
    to the code; its last calculation does (pw.x killed: 305, output files incomplete).
    """
    last = last_calculation(node)
    if last is None:
        return 'no calculation ran'
    status = last.exit_status if last.is_finished else last.process_state.value
    message = f': {last.exit_message}' if last.exit_message else ''
    return f'last calculation {last.process_label}<{last.pk}> exit status {status}{message}'


def merge_overrides(
    base: Mapping[str, Any],
    overrides: Mapping[str, Any] | None,
    open_sections: frozenset[str] = frozenset(),
    strict: bool = True,
    _path: tuple[str, ...] = (),
) -> dict:
    """Return a deep copy of ``base`` with ``overrides`` merged in, recursively.

    With ``strict``, a key of ``overrides`` that ``base`` does not have raises ``ValueError`` naming its
    dotted path, unless an enclosing key is in ``open_sections``. A mapping merges into a mapping; any other
    value replaces the old one (``None`` included, which adapters read as "unset").
    """
    merged = copy.deepcopy(dict(base))
    unknown = []
    for key, value in (overrides or {}).items():
        path = (*_path, str(key))
        is_open = bool(open_sections.intersection(path[:-1])) or not strict
        if key not in merged and not is_open:
            unknown.append('.'.join(path))
            continue
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_overrides(merged[key], value, open_sections, strict, path)
        else:
            merged[key] = copy.deepcopy(value)
    if unknown:
        raise ValueError(f'unknown protocol override key(s): {", ".join(unknown)}')
    return merged


def protocol_digest(protocol: Mapping[str, Any]) -> str:
    """Return a short digest of a merged protocol (its ``description`` ignored) for :meth:`EngineAdapter.identity`.

    Two WorkChains with the same protocol name but different overrides (a k-point spacing, a cutoff)
    must not share elemental references; the digest tells them apart.
    """
    content = {key: value for key, value in protocol.items() if key != 'description'}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:16]


class EngineAdapter(abc.ABC):
    """One DFT code behind the common ``hpcai.dft`` interface. See the module docstring for the contract."""

    #: Registered name, as in :data:`ENGINES` and the ``engine`` input of ``hpcai.dft``.
    name: ClassVar[str]
    #: The protocol YAML: ``default_protocol``, ``default_inputs`` and ``protocols: {name: {description, ...}}``.
    protocol_file: ClassVar[pathlib.Path]
    #: Protocol keys whose mapping accepts any override key (raw code input).
    open_sections: ClassVar[frozenset[str]] = frozenset()
    #: The protocol key naming the pseudopotential (or POTCAR) family, reported as ``pseudo_family``.
    pseudo_family_key: ClassVar[str] = 'pseudo_family'
    #: Whether MP's fitted GGA/GGA+U constants describe this engine's +U energies, so that a +U compound run with
    #: MP's U values lands on MP's scale: they were fitted to VASP runs with MP's PAW setups, and the U energy
    #: depends on the code's projectors (Quantum ESPRESSO: no, see docs/source/dft.md).
    mp_gga_u_constants_apply: ClassVar[bool] = False
    #: ``metadata.options`` every CalcJob starts from; the ``options`` input is merged over them.
    DEFAULT_OPTIONS: ClassVar[dict] = {
        'resources': {'num_machines': 1},
        'max_wallclock_seconds': 12 * 3600,
        'withmpi': True,
    }

    # -- protocol ---------------------------------------------------------------------------------------
    @classmethod
    def _read_protocol_file(cls) -> dict:
        with open(cls.protocol_file, encoding='utf-8') as handle:
            return yaml.safe_load(handle)

    @classmethod
    def protocol_names(cls) -> list[str]:
        return list(cls._read_protocol_file()['protocols'])

    @classmethod
    def default_protocol(cls) -> str:
        return cls._read_protocol_file()['default_protocol']

    @classmethod
    def load_protocol(cls, name: str | None = None, overrides: Mapping[str, Any] | None = None) -> dict:
        """Return the merged protocol ``name`` (default: the file's ``default_protocol``) with ``overrides``.

        Raises ``ValueError`` for an unknown protocol name or an unknown override key.
        """
        content = cls._read_protocol_file()
        name = name or content['default_protocol']
        if name not in content['protocols']:
            raise ValueError(f'unknown {cls.name} protocol {name!r}; choose from {", ".join(content["protocols"])}')
        # The protocol's own keys may add to open sections of the defaults, but not invent other keys either.
        protocol = merge_overrides(content.get('default_inputs', {}), content['protocols'][name], cls.open_sections)
        return merge_overrides(protocol, overrides, cls.open_sections)

    def reference_overrides(self, structure, protocol: dict) -> dict:
        """Return protocol overrides under which the elemental references of ``structure`` must be computed.

        Total energies only cancel in a formation energy when compound and references share the basis:
        a plane-wave code whose cutoff follows the structure's elements (QE with SSSP) returns the
        compound's cutoffs here, so references are computed, and found again, per cutoff. The default,
        for engines with one basis for everything (VASP with MP's ENCUT), is no override.
        """
        return {}

    def molecular_crystal_protocol(self, protocol: dict) -> dict:
        """Return the protocol to use for a molecular crystal (the O2, N2, Cl2 elemental references).

        Their bands are nearly flat, so an engine may use a coarser k-point mesh there; the default keeps the
        protocol as it is. (The cell of a molecular crystal is never relaxed: ``relax_cell=False``.)
        """
        return protocol

    # -- before any calculation ------------------------------------------------------------------------
    @abc.abstractmethod
    def check_structure(self, structure, code, protocol: dict) -> list[str]:
        """Return the sorted element symbols of ``structure`` without pseudopotential / POTCAR (empty: fine)."""

    def identity(self, code, protocol_name: str, protocol: dict) -> dict[str, str]:
        """Return ``{'engine', 'protocol', 'protocol_digest', 'pseudo_family'}`` (strings).

        These make energies comparable.

        ``pseudo_family`` is the protocol's value under :attr:`pseudo_family_key`: the label of the
        pseudopotential family (QE) or POTCAR family (VASP); ``protocol_digest`` is :func:`protocol_digest`
        of the merged protocol (overrides included). Adapters may add string-valued keys; all of them enter
        the reference look-up.
        """
        return {
            'engine': self.name,
            'protocol': protocol_name,
            'protocol_digest': protocol_digest(protocol),
            'pseudo_family': protocol[self.pseudo_family_key],
        }

    def _options(self, options: dict | None) -> dict:
        """``metadata.options`` of every CalcJob: :attr:`DEFAULT_OPTIONS` with ``options`` merged in."""
        return merge_overrides(self.DEFAULT_OPTIONS, options, strict=False)

    def hubbard_u(self, structure, protocol: dict) -> dict[str, float]:
        """Return element -> U (eV) that the static run of ``structure`` (``StructureData``) applies; ``{}``: plain GGA.

        ``hpcai.dft`` passes it to the energy corrections: MP's +U constants only apply to a run with MP's U values.
        The default is plain GGA.
        """
        return {}

    def gga_u_constants(self, identity: Mapping[str, str]) -> dict[str, float]:
        """This engine's own GGA/GGA+U constants (element -> eV per atom of it) for runs of ``identity``
        (:meth:`identity`), where MP's do not describe its +U energies; ``{}`` without a fit for that identity.

        They are fitted to MP's formation energies of compounds this engine ran with MP's U values under the same
        pseudopotentials and protocol (``GGA_U_CONSTANTS_FILE``, with the compounds and errors of the fit).
        """
        if self.mp_gga_u_constants_apply or not GGA_U_CONSTANTS_FILE.is_file():
            return {}
        fits = json.loads(GGA_U_CONSTANTS_FILE.read_text(encoding='utf-8'))['fits']
        for fit in fits:
            if all(fit['identity'].get(key) == identity.get(key) for key in GGA_U_FIT_KEYS):
                return {element: float(value['constant']) for element, value in fit['constants'].items()}
        return {}

    # -- builders ---------------------------------------------------------------------------------------
    @abc.abstractmethod
    def get_relax_builder(
        self,
        structure,
        code,
        protocol: dict,
        options: dict | None = None,
        magnetic_moments: dict[str, float] | None = None,
        relax_cell: bool = True,
    ):
        """Return a ``ProcessBuilder`` relaxing ``structure``: positions and cell, or positions only.

        ``magnetic_moments`` maps element symbols to initial moments (μB per atom). ``None``: the engine's
        default (a ferromagnetic guess for :data:`MAGNETIC_ELEMENTS`, no spin polarization otherwise);
        a mapping: spin-polarized exactly when a value is non-zero (``{}``: no spin polarization).
        ``relax_cell=False`` keeps the cell fixed (molecular-crystal references, where PBE without
        dispersion has no binding between molecules to find a volume from).
        """

    @abc.abstractmethod
    def get_scf_builder(
        self,
        structure,
        code,
        protocol: dict,
        options: dict | None = None,
        magnetic_moments: dict[str, float] | None = None,
    ):
        """Return a ``ProcessBuilder`` for a static SCF of ``structure`` whose outputs give :class:`ScfResult`.

        ``magnetic_moments`` as in :meth:`get_relax_builder`.
        """

    # -- results ----------------------------------------------------------------------------------------
    @abc.abstractmethod
    def get_relaxed_structure(self, node):
        """Return the relaxed ``StructureData`` of the finished-ok relax process ``node``."""

    @abc.abstractmethod
    def get_scf_result_nodes(self, node) -> dict:
        """Return ``{name: Data}``: the output nodes of the finished-ok SCF process ``node`` its result is read from.

        The WorkChain passes them to a calcfunction calling :meth:`scf_result_from_nodes`, so that the common
        outputs (total energy, band gap, ...) are linked in the provenance graph to the engine's own outputs.
        Names must be valid link labels (letters, digits, underscores).
        """

    @abc.abstractmethod
    def scf_result_from_nodes(self, nodes: dict) -> ScfResult:
        """Return the :class:`ScfResult` computed from the nodes :meth:`get_scf_result_nodes` returned."""

    def get_scf_result(self, node) -> ScfResult:
        """Return the :class:`ScfResult` of the finished-ok SCF process ``node``."""
        return self.scf_result_from_nodes(self.get_scf_result_nodes(node))

    def is_scf_unconverged(self, node) -> bool:
        """Return whether the failed SCF process ``node`` failed because the electrons did not converge.

        The default says no; adapters override it with their engine's exit statuses.
        """
        return False

    def failed_restarting_after_walltime(self, node) -> bool:
        """Return whether the failed process ``node`` ended because the engine's restart of a calculation stopped at
        its wall time failed, where a run from scratch would not (``hpcai.dft`` then runs the step once more).

        The default says no; adapters override it where their engine's restart is known to fail that way.
        """
        return False
