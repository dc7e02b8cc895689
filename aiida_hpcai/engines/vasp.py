"""VASP engine of ``hpcai.dft``, through aiida-vasp.

Relaxation: ``vasp.relax`` (``VaspRelaxWorkChain``: repeats the relaxation until cell and positions stop
changing, then a single point on the final cell); static run: ``vasp.vasp`` (``VaspWorkChain``). Both keep
aiida-vasp's restart handlers.

INCAR and k-points come from pymatgen's Materials Project input sets (``MPRelaxSet``, ``MPStaticSet``;
names and overrides in ``protocols/vasp.yaml``), so that ``balanced`` energies are comparable with MP's.
pymatgen only needs the POTCAR *symbols* of its config for that, never POTCAR files: we read the set's
``incar`` and ``kpoints`` and never write its ``potcar``. The POTCARs themselves come from an aiida-vasp
POTCAR family (``PotcarData`` nodes in a ``PotcarGroup``), with the set's element -> symbol mapping.

What differs from running the set's files by hand, and why:

* ``IBRION``, ``ISIF``, ``NSW`` and ``EDIFFG`` of the relaxation go into aiida-vasp's ``relax_settings``
  (``algo``, ``positions``/``shape``/``volume``, ``steps``, ``force_cutoff``), which writes them back into
  the INCAR of every relaxation run and keeps them out of the final single point. aiida-vasp always sets
  ``EDIFFG = -force_cutoff`` (MP keeps VASP's default energy criterion ``10 * EDIFF``).
* ``MAGMOM`` and the ``LDAU*`` lists are re-ordered to the species order aiida-vasp writes the POSCAR and
  POTCAR in (consecutive *kinds* of the ``StructureData``), so they stay aligned for any kind naming.
* pymatgen's pseudo-tag ``EDIFF_PER_ATOM`` is turned into ``EDIFF`` by pymatgen and then dropped.
"""

from __future__ import annotations

import itertools
import pathlib

import numpy as np
from aiida import orm

from .base import EngineAdapter, ScfResult, band_gap_from_eigenvalues, last_calculation

#: Tags pymatgen may leave in an INCAR that are not VASP tags.
PYMATGEN_PSEUDO_TAGS = ('EDIFF_PER_ATOM',)
#: Per-species INCAR lists, in POSCAR species order.
PER_SPECIES_TAGS = ('LDAUU', 'LDAUL', 'LDAUJ')
#: VASP's ISIF -> which degrees of freedom move (aiida-vasp ``RelaxModeEnum``, read backwards).
ISIF_DEGREES_OF_FREEDOM = {
    2: {'positions': True, 'shape': False, 'volume': False},
    3: {'positions': True, 'shape': True, 'volume': True},
    4: {'positions': True, 'shape': True, 'volume': False},
    5: {'positions': False, 'shape': True, 'volume': False},
    6: {'positions': False, 'shape': True, 'volume': True},
    7: {'positions': False, 'shape': False, 'volume': True},
}
#: VASP's IBRION -> aiida-vasp ``relax_settings.algo``.
IBRION_ALGORITHMS = {1: 'rd', 2: 'cg'}


def _plain(value):
    """Return ``value`` with numpy scalars turned into Python numbers (``orm.Dict`` needs JSON types)."""
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if hasattr(value, 'item') and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def kind_groups(structure) -> list[str]:
    """Return the kind names in the order aiida-vasp writes POSCAR species (runs of consecutive equal kinds)."""
    return [kind_name for kind_name, _ in itertools.groupby(site.kind_name for site in structure.sites)]


def kpoints_from_pymatgen(pmg_kpoints, structure) -> orm.KpointsData:
    """Return the ``KpointsData`` mesh that aiida-vasp writes as the KPOINTS of a pymatgen ``Kpoints``.

    aiida-vasp always writes a Gamma-centred mesh plus a shift; a Monkhorst-Pack mesh is the Gamma-centred
    one shifted by half a division along every axis with an even number of divisions.
    """
    from pymatgen.io.vasp.inputs import KpointsSupportedModes

    if pmg_kpoints is None or len(pmg_kpoints.kpts) != 1:
        raise ValueError(f'the input set gave no single automatic k-point mesh: {pmg_kpoints}')
    mesh = [int(division) for division in pmg_kpoints.kpts[0]]
    shift = [float(value) for value in pmg_kpoints.kpts_shift]
    if pmg_kpoints.style == KpointsSupportedModes.Monkhorst:
        shift = [value + (0.5 if division % 2 == 0 else 0.0) for value, division in zip(shift, mesh)]
    elif pmg_kpoints.style != KpointsSupportedModes.Gamma:
        raise ValueError(f'unsupported k-point style {pmg_kpoints.style} from the input set')
    kpoints = orm.KpointsData()
    kpoints.set_cell_from_structure(structure)
    kpoints.set_kpoints_mesh(mesh, offset=[value % 1.0 for value in shift])
    return kpoints


class VaspEngine(EngineAdapter):
    """VASP through ``vasp.relax`` / ``vasp.vasp``; MP input sets; POTCARs from an aiida-vasp POTCAR family."""

    name = 'vasp'
    protocol_file = pathlib.Path(__file__).parent / 'protocols' / 'vasp.yaml'
    open_sections = frozenset({'incar', 'kpoints', 'potential_mapping'})
    pseudo_family_key = 'potential_family'
    mp_gga_u_constants_apply = True  # MP's own code, input sets and PAW setups

    # -- input set --------------------------------------------------------------------------------------
    @staticmethod
    def input_set(name: str, structure, section: dict, protocol: dict):
        """Return the pymatgen input set ``name`` for ``structure`` with the protocol section's overrides.

        ``sort_structure=False`` keeps our site order, so per-site tags (``MAGMOM``) line up with our sites.
        """
        import pymatgen.io.vasp.sets as pmg_sets

        try:
            set_class = getattr(pmg_sets, name)
        except AttributeError as exception:
            raise ValueError(f'pymatgen has no VASP input set {name!r}') from exception
        return set_class(
            structure.get_pymatgen_structure(),
            sort_structure=False,
            user_incar_settings=dict(section['incar']),
            user_kpoints_settings=dict(section['kpoints']),
            user_potcar_settings=dict(protocol['potential_mapping']),
        )

    @staticmethod
    def potcar_symbols(structure, protocol: dict, set_name: str) -> dict[str, str | None]:
        """Return element -> POTCAR symbol (directory name in the family) of the input set plus overrides.

        ``None`` for an element the input set has no POTCAR for.
        """
        import pymatgen.io.vasp.sets as pmg_sets

        config = getattr(pmg_sets, set_name).CONFIG['POTCAR']
        mapping = protocol['potential_mapping']
        symbols = {}
        for element in sorted(structure.get_symbols_set()):
            symbol = mapping.get(element, config.get(element))
            symbols[element] = symbol['symbol'] if isinstance(symbol, dict) else symbol
        return symbols

    def incar(self, structure, pmg_set, magnetic_moments: dict[str, float] | None) -> dict:
        """Return the INCAR (lower-case tags) of ``pmg_set`` for ``structure``, aligned with aiida-vasp's POSCAR.

        ``magnetic_moments`` ``None`` keeps MP's rule (``ISPIN = 2``, ``MAGMOM`` from the set's table, 0.6 μB
        for elements it does not list); a mapping sets ``MAGMOM`` per element (0 for the others) and
        ``ISPIN = 2`` exactly when a moment is non-zero.
        """
        incar = {key: _plain(value) for key, value in pmg_set.incar.items() if key not in PYMATGEN_PSEUDO_TAGS}
        sites = structure.sites

        if magnetic_moments is not None:
            moments = [float(magnetic_moments.get(structure.get_kind(site.kind_name).symbol, 0.0)) for site in sites]
            if any(moments):
                incar['ISPIN'] = 2
                incar['MAGMOM'] = moments
            else:
                incar['ISPIN'] = 1
                incar.pop('MAGMOM', None)
        if 'MAGMOM' in incar and len(incar['MAGMOM']) != len(sites):
            raise ValueError(f'MAGMOM of the input set has {len(incar["MAGMOM"])} values for {len(sites)} sites')

        # pymatgen writes per-species lists for runs of equal *elements*; aiida-vasp for runs of equal *kinds*.
        species_present = [tag for tag in PER_SPECIES_TAGS if tag in incar]
        if species_present:
            per_element = {}
            for index, element in enumerate(pmg_set.poscar.site_symbols):
                per_element[element] = {tag: incar[tag][index] for tag in species_present}
            kinds = kind_groups(structure)
            for tag in species_present:
                incar[tag] = [per_element[structure.get_kind(kind).symbol][tag] for kind in kinds]

        return {key.lower(): value for key, value in incar.items()}

    def _fill_vasp_namespace(self, namespace, structure, code, protocol, section, incar, kpoints, options):
        """Fill the inputs of a ``VaspWorkChain`` (``builder`` of ``vasp.vasp``, ``builder.vasp`` of ``vasp.relax``)."""
        symbols = self.potcar_symbols(structure, protocol, section['input_set'])
        namespace.code = code
        namespace.parameters = orm.Dict({'incar': incar})
        namespace.kpoints = kpoints
        namespace.potential_family = orm.Str(protocol['potential_family'])
        namespace.potential_mapping = orm.Dict({kind.name: symbols[kind.symbol] for kind in structure.kinds})
        namespace.max_iterations = orm.Int(section['max_iterations'])
        namespace.clean_workdir = orm.Bool(protocol['clean_workdir'])
        namespace.calc.metadata.options = self._options(options)

    # -- interface --------------------------------------------------------------------------------------
    @staticmethod
    def family_symbols(label: str) -> set[str] | None:
        """Return the POTCAR symbols (``full_name``) in the aiida-vasp POTCAR family ``label``; ``None`` if absent."""
        from aiida_vasp.data.potcar import PotcarData, PotcarGroup

        if PotcarData.get_potcar_group(label) is None:
            return None
        query = orm.QueryBuilder()
        query.append(PotcarGroup, filters={'label': label}, tag='family')
        query.append(PotcarData, with_group='family', project='attributes.full_name')
        return set(query.all(flat=True))

    def check_structure(self, structure, code, protocol: dict) -> list[str]:
        wanted = {}
        for section in ('relax', 'scf'):
            for element, symbol in self.potcar_symbols(structure, protocol, protocol[section]['input_set']).items():
                wanted.setdefault(element, set()).add(symbol)
        available = self.family_symbols(protocol['potential_family'])
        if available is None:
            return sorted(wanted)
        return sorted(element for element, symbols in wanted.items() if None in symbols or not symbols <= available)

    def hubbard_u(self, structure, protocol: dict) -> dict[str, float]:
        """The U values of the static run's INCAR (``MPStaticSet``: MP's own, unless the protocol overrides them)."""
        section = protocol['scf']
        pmg_set = self.input_set(section['input_set'], structure, section, protocol)
        incar = pmg_set.incar
        if not incar.get('LDAU'):
            return {}
        return {element: float(u) for element, u in zip(pmg_set.poscar.site_symbols, incar['LDAUU']) if u}

    def get_relax_builder(self, structure, code, protocol, options=None, magnetic_moments=None, relax_cell=True):
        from aiida.plugins import WorkflowFactory

        section = protocol['relax']
        pmg_set = self.input_set(section['input_set'], structure, section, protocol)
        incar = self.incar(structure, pmg_set, magnetic_moments)

        ediffg = incar.pop('ediffg', None)
        if ediffg is not None and ediffg > 0:
            raise ValueError('vasp.relax stops on forces only: give EDIFFG < 0 or use relax.force_cutoff')
        isif = incar.pop('isif', 3)
        degrees_of_freedom = dict(ISIF_DEGREES_OF_FREEDOM[isif])
        if not relax_cell:
            degrees_of_freedom.update(shape=False, volume=False)
        if not degrees_of_freedom['positions'] and not (degrees_of_freedom['shape'] or degrees_of_freedom['volume']):
            raise ValueError(f'ISIF={isif} with a fixed cell leaves nothing to relax')
        ibrion = incar.pop('ibrion', 2)
        if ibrion not in IBRION_ALGORITHMS:
            raise ValueError(f'vasp.relax supports IBRION 1 or 2, not {ibrion}')
        steps = incar.pop('nsw', 99)

        builder = WorkflowFactory('vasp.relax').get_builder()
        builder.structure = structure
        self._fill_vasp_namespace(
            builder.vasp,
            structure,
            code,
            protocol,
            section,
            incar,
            kpoints_from_pymatgen(pmg_set.kpoints, structure),
            options,
        )
        builder.relax_settings = {
            'algo': IBRION_ALGORITHMS[ibrion],
            'steps': steps,
            'force_cutoff': -ediffg if ediffg is not None else section['force_cutoff'],
            'convergence_max_iterations': section['convergence_max_iterations'],
            **degrees_of_freedom,
        }
        builder.verbose = orm.Bool(False)
        return builder

    def get_scf_builder(self, structure, code, protocol, options=None, magnetic_moments=None):
        from aiida.plugins import WorkflowFactory

        section = protocol['scf']
        pmg_set = self.input_set(section['input_set'], structure, section, protocol)
        incar = self.incar(structure, pmg_set, magnetic_moments)
        builder = WorkflowFactory('vasp.vasp').get_builder()
        builder.structure = structure
        self._fill_vasp_namespace(
            builder,
            structure,
            code,
            protocol,
            section,
            incar,
            kpoints_from_pymatgen(pmg_set.kpoints, structure),
            options,
        )
        # The band gap is read from the eigenvalues and occupations, which only the `bands` node carries.
        builder.settings = orm.Dict({'parser_settings': {'include_node': ['bands']}})
        return builder

    def get_relaxed_structure(self, node):
        return node.outputs.relax.structure

    def get_scf_result_nodes(self, node) -> dict:
        # The number of atoms is in neither output, hence the input structure.
        return {'misc': node.outputs.misc, 'bands': node.outputs.bands, 'structure': node.inputs.structure}

    def scf_result_from_nodes(self, nodes: dict) -> ScfResult:
        misc = nodes['misc'].get_dict()
        eigenvalues, occupations = nodes['bands'].get_bands(also_occupations=True)
        _, weights = nodes['bands'].get_kpoints(also_weights=True)
        spin_polarized = eigenvalues.ndim == 3 and eigenvalues.shape[0] == 2
        fermi_energy = misc.get('fermi_level')
        if spin_polarized:
            # The OUTCAR's last 'number of electron ... magnetization ...' line: one value (collinear) or x, y, z.
            magnetization = misc.get('magnetization') or []
            if len(magnetization) != 1:
                raise ValueError(f'expected the collinear total magnetization from the OUTCAR, got {magnetization}')
            total_magnetization = float(magnetization[0])
        else:
            total_magnetization = 0.0
        # Band counting (the rule of the Quantum ESPRESSO adapter too), so that smearing cannot half-empty the
        # top valence band: the k-weighted sums of vasprun.xml's occupations (at most 1 per state and spin
        # channel) are the electrons of each channel; they add up to NELECT.
        weights = np.asarray(weights, dtype=float) / np.sum(weights)
        per_channel = (np.asarray(occupations).sum(axis=-1) * weights).sum(axis=-1)
        if spin_polarized:
            electrons, moment = float(per_channel.sum()), float(per_channel[0] - per_channel[1])
        else:
            electrons, moment = 2 * float(per_channel), 0.0
        band_gap = band_gap_from_eigenvalues(eigenvalues, number_of_electrons=electrons, total_magnetization=moment)
        return ScfResult(
            total_energy=float(misc['total_energies']['energy_extrapolated']),
            number_of_atoms=len(nodes['structure'].sites),
            band_gap=band_gap,
            total_magnetization=total_magnetization,
            converged=bool(misc['run_status']['electronic_converged']),
            fermi_energy=float(fermi_energy) if fermi_energy is not None else None,
        )

    def is_scf_unconverged(self, node) -> bool:
        """Whether a failed ``VaspWorkChain`` stopped because the electrons did not converge."""
        from aiida_vasp.calcs.vasp import VaspCalculation
        from aiida_vasp.workchains.v2.vasp import VaspWorkChain

        unconverged = {
            VaspWorkChain.exit_codes.ERROR_ELECTRONIC_STRUCTURE_NOT_CONVERGED.status,
            VaspWorkChain.exit_codes.ERROR_UNCONVERGED_ELECTRONIC_STRUCTURE_IN_RELAX.status,
        }
        if node.exit_status in unconverged:
            return True
        last = last_calculation(node)
        return last is not None and last.exit_status == VaspCalculation.exit_codes.ERROR_ELECTRONIC_NOT_CONVERGED.status
