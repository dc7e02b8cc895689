"""``hpcai.dft``: relax, static SCF and formation energy of one structure, with any DFT engine.

The engine (``quantumespresso`` or ``vasp``) is an input; everything engine-specific lives in its adapter
(``aiida_hpcai/engines``). Steps:

1. checks, before any calculation: engine, protocol and override keys (input validation); elements
   without pseudopotential / POTCAR; elements without a reference structure (when formation energy is on);
2. optional standardization of the cell (spglib standard primitive, so the codes find the full symmetry);
3. variable-cell relaxation (the engine's own WorkChain, with its restart handlers); skipped when ``relax`` is False
   (a single-point energy) or the cell is kept (``relax_cell`` False) and symmetry fixes every atom, as in rock salt
   or diamond (nothing could move);
4. static SCF on the relaxed structure: total energy, band gap, magnetization;
5. formation energy per atom from elemental references computed with the same engine, protocol and
   pseudopotentials: each found by query if some earlier WorkChain computed it, else computed here once
   as a child ``hpcai.dft`` with formation energy off, and tagged for every later WorkChain. A structure that
   is itself an elemental reference (Si mp-149) is its own: one relax + SCF serve as both.
"""

from __future__ import annotations

import collections

from aiida import orm
from aiida.engine import ToContext, WorkChain, calcfunction, if_, while_

from ..engines import get_engine
from ..engines import references as refs
from ..engines.base import failure_cause, merge_overrides
from ..engines.corrections import SCHEMES, energy_corrections, on_mp_scale
from .launch_once import LaunchesOnce


def validate_inputs(inputs, _):
    """Reject an unknown engine, protocol or protocol override key before anything runs."""
    if 'engine' not in inputs or 'protocol' not in inputs:
        return None  # a parent exposing these inputs validates them once it has them
    try:
        engine = get_engine(inputs['engine'].value)
        overrides = inputs['overrides'].get_dict() if 'overrides' in inputs else None
        engine.load_protocol(inputs['protocol'].value, overrides)
    except (ValueError, ImportError) as exception:
        return str(exception)


def _energy_correction(value, _):
    if value.value not in SCHEMES:
        return f'energy_correction {value.value!r}: choose one of {", ".join(SCHEMES)}'


def validate_structure(structure, _):
    """Refuse a structure that cannot be a crystal (the one validation path every door uses), before DFT runs."""
    from ..models.structure_io import InvalidStructure, validate_atoms

    atoms = structure.get_ase()
    try:
        validate_atoms(atoms.numbers, atoms.positions, atoms.cell.array)
    except InvalidStructure as exception:
        return f'structure<{structure.pk}> {structure.get_formula()}: {exception}'
    return None


def reference_identity(engine, code, protocol_name: str, overrides: dict | None, structure, protocol: dict):
    """Return ``(overrides, identity)`` under which the elemental references of ``structure`` are computed and found.

    The references' protocol is the compound's plus what the engine needs for energies to cancel (QE: the
    compound's cutoffs). ``hpcai.dft_batch`` asks it too, to compute each reference once before its children.
    """
    reference_overrides = merge_overrides(
        overrides or {}, engine.reference_overrides(structure, protocol), strict=False
    )
    reference_protocol = engine.load_protocol(protocol_name, reference_overrides)
    return reference_overrides, engine.identity(code, protocol_name, reference_protocol)


def reference_inputs(element: str, engine: orm.Str, code, protocol: orm.Str, overrides: dict, options=None) -> dict:
    """The inputs of the ``hpcai.dft`` WorkChain that computes the elemental reference of ``element``."""
    entry = refs.get_reference_entry(element)
    inputs = {
        'structure': refs.get_reference_structure(element),
        'engine': engine,
        'code': code,
        'protocol': protocol,
        'magnetic_moments': orm.Dict(refs.get_reference_magnetic_moments(element)),
        'molecular_crystal': orm.Bool(entry['molecular_crystal']),
        # PBE does not bind the layers of graphite or black P: their cell stays at the dataset's geometry.
        'relax_cell': orm.Bool(not refs.fixed_cell(element)),
        'compute_formation_energy': orm.Bool(False),
        'metadata': {
            'call_link_label': f'reference_{element}',
            'label': f'reference {element} {entry["material_id"]}',
        },
    }
    if overrides:
        inputs['overrides'] = orm.Dict(overrides)
    if options is not None:
        inputs['options'] = options
    return inputs


def lost_to_a_daemon_fault(node) -> bool:
    """Whether the engine's WorkChain ``node`` failed because one of its CalcJobs finished ok without ``remote_folder``.

    aiida-core (2.9.4) marks a CalcJob's upload as done before its next checkpoint; when the worker is killed in
    between, the worker that takes the process up again skips the upload as done and never attaches the
    ``remote_folder`` output. The job then runs and finishes ok without it, and the engine's WorkChain
    (PwBaseWorkChain: exit status 11) fails on the missing required output. Seen in tests/scaleout/test_daemon_faults.py.
    """
    if node.is_finished_ok:
        return False
    return any(
        descendant.is_finished_ok and 'remote_folder' not in descendant.outputs
        for descendant in node.called_descendants
        if isinstance(descendant, orm.CalcJobNode)
    )


@calcfunction
def standardize_structure(structure: orm.StructureData) -> orm.StructureData:
    """Return spglib's standardized primitive cell of ``structure`` (symprec 1e-3 Å), its basis Niggli-reduced.

    spglib keeps the orientation of the standard conventional cell (cubic axes along x, y, z; the hexagonal
    and rhombohedral 3-fold axis along z), so every rotation is one of the Cartesian operations pw.x tries.
    pymatgen's ``get_primitive_standard_structure`` reorients rhombohedral cells (Setyawan-Curtarolo), after
    which pw.x finds 4 of the 12 operations of R-3m (alpha-B, As, graphite, Li here).

    The rhombohedral primitive vectors of a long-period cell are needles (the carbon reference: three 11.9 Å
    vectors 11.9 degrees apart around a 62.6 Å^3 cell), and a plane-wave code's FFT grid follows the vector
    lengths: 125^3 points there. The Niggli-reduced basis of the same lattice (2.47, 2.47, 11.94 Å) needs about
    23 times fewer. pymatgen's reduction is an integer change of basis in the same Cartesian frame (and
    right-handed), so the rotations stay those pw.x tries.
    """
    import spglib
    from pymatgen.core import Lattice, Structure

    pymatgen = structure.get_pymatgen_structure()
    cell = (pymatgen.lattice.matrix, pymatgen.frac_coords, [site.specie.Z for site in pymatgen])
    standardized = spglib.standardize_cell(cell, to_primitive=True, no_idealize=False, symprec=1e-3)
    if standardized is None:
        raise ValueError(f'spglib found no symmetry dataset for {pymatgen.composition.reduced_formula}')
    lattice, positions, numbers = standardized
    reduced = Structure(Lattice(lattice), numbers, positions).get_reduced_structure('niggli')
    return orm.StructureData(pymatgen=reduced)


def positions_fixed_by_symmetry(structure: orm.StructureData, symprec: float = 1e-5) -> bool:
    """Whether symmetry alone fixes every atom: each sits on a site whose site-symmetry group leaves no vector
    invariant (a Wyckoff position without a free parameter: rock salt, diamond, hcp). The forces then
    vanish by symmetry, and a relaxation at fixed cell would be one SCF that moves nothing.

    Kinds count as species (antiferromagnetic sublattices lower the symmetry). A structure spglib finds no
    symmetry for, or one within ``symprec`` (Å) of a symmetric cell but not on it, is not fixed: it relaxes.
    """
    import numpy as np
    import spglib

    kinds = {name: index for index, name in enumerate(sorted({site.kind_name for site in structure.sites}))}
    lattice = np.array(structure.cell)
    positions = np.array([site.position for site in structure.sites]) @ np.linalg.inv(lattice)
    types = [kinds[site.kind_name] for site in structure.sites]
    symmetry = spglib.get_symmetry((lattice, positions, types), symprec=symprec)
    if symmetry is None:
        return False
    for position in positions:
        invariant = []
        for rotation, translation in zip(symmetry['rotations'], symmetry['translations']):
            shift = rotation @ position + translation - position
            shift -= np.round(shift)
            if np.linalg.norm(shift @ lattice) <= 2 * symprec:  # this operation leaves the atom where it is
                invariant.append(rotation - np.eye(3))
        # displacements the site symmetry allows: the common null space of (R - 1) over its operations
        if np.linalg.matrix_rank(np.vstack(invariant)) < 3:
            return False
    return True


@calcfunction
def collect_scf_result(engine: orm.Str, identity: orm.Dict, **nodes) -> dict:
    """Turn the engine's SCF output nodes into the common outputs (eV, μB)."""
    result = get_engine(engine.value).scf_result_from_nodes(nodes)
    outputs = {
        'total_energy': orm.Float(result.total_energy),
        'energy_per_atom': orm.Float(result.energy_per_atom),
        'total_magnetization': orm.Float(result.total_magnetization),
        'identity': orm.Dict(identity.get_dict()),
    }
    if result.band_gap is not None:
        outputs['band_gap'] = orm.Float(result.band_gap)
    return outputs


@calcfunction
def compute_formation_energy(
    structure: orm.StructureData,
    energy_per_atom: orm.Float,
    energy_correction: orm.Str,
    hubbard_u: orm.Dict,
    mp_gga_u_constants_apply: orm.Bool,
    gga_u_constants: orm.Dict | None = None,
    **reference_energies,
):
    """Formation energy per atom (eV): ``(E - sum_i n_i mu_i) / N`` with ``mu_i`` the references per atom.

    Returns it raw (``formation_energy_per_atom_uncorrected``) and with the corrections of ``energy_correction``
    for a compound run with ``hubbard_u`` (element -> U, eV) by an engine for which MP's GGA/GGA+U constants hold
    or not (``mp_gga_u_constants_apply``) added (``formation_energy_per_atom``;
    ``energy_corrections`` says which, and whether the value is on MP's scale). ``gga_u_constants``: the engine's
    own constants where MP's do not hold (``EngineAdapter.gga_u_constants``), given only when it has some.
    """
    composition = collections.Counter(structure.get_kind(site.kind_name).symbol for site in structure.sites)
    natoms = sum(composition.values())
    reference_sum = sum(count * reference_energies[element].value for element, count in composition.items())
    raw = energy_per_atom.value - reference_sum / natoms
    record = energy_corrections(
        structure.get_pymatgen_structure(),
        energy_correction.value,
        hubbard_u.get_dict(),
        constants_apply=mp_gga_u_constants_apply.value,
        engine_constants=gga_u_constants.get_dict() if gga_u_constants is not None else None,
    )
    return {
        'formation_energy_per_atom': orm.Float(raw + record['per_atom']),
        'formation_energy_per_atom_uncorrected': orm.Float(raw),
        'energy_corrections': orm.Dict(record),
    }


def is_single_point(node) -> bool:
    """Whether an ``hpcai.dft`` node computed its structure as given (``relax`` False): its ``relaxed_structure`` is
    then the input cell, and its energy that of a cell, not of a relaxed material (no look-up hit, no structure a
    later screening knows). Nodes made before the input existed were relaxed."""
    return 'relax' in node.inputs and not node.inputs.relax.value


def formation_energy_on_mp_scale(outputs) -> bool:
    """Whether the formation energy among an ``hpcai.dft``'s ``outputs`` carries MP's corrections, as the surrogate's
    training data and MP's own values do.

    Runs with ``energy_correction='none'``, runs made before the corrections existed (raw GGA), and +U compounds
    run without MP's U values or by an engine MP's +U constants were not fitted to (QE) are not on that scale.
    """
    return 'energy_corrections' in outputs and on_mp_scale(dict(outputs['energy_corrections']))


def formation_energy_will_be_on_mp_scale(dft_inputs, structure: orm.StructureData) -> bool:
    """Whether ``hpcai.dft`` run with ``dft_inputs`` (``engine``, ``protocol``, ``energy_correction``, optional
    ``overrides``) will report the formation energy of ``structure`` on MP's scale, before it runs: the rule of its
    ``compute_formation_energy``, which depends on the composition alone (a relaxation keeps it)."""
    engine = get_engine(dft_inputs['engine'].value)
    overrides = dft_inputs['overrides'].get_dict() if 'overrides' in dft_inputs else None
    protocol = engine.load_protocol(dft_inputs['protocol'].value, overrides)
    record = energy_corrections(
        structure.get_pymatgen_structure(),
        dft_inputs['energy_correction'].value,
        engine.hubbard_u(structure, protocol),
        constants_apply=engine.mp_gga_u_constants_apply,
        engine_constants=engine.gga_u_constants(engine.identity(None, dft_inputs['protocol'].value, protocol)),
    )
    return record['on_mp_scale']


class DftWorkChain(LaunchesOnce, WorkChain):
    """Relax a structure, run a static SCF and compute its formation energy, with the engine given as input."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input(
            'structure',
            valid_type=orm.StructureData,
            validator=validate_structure,
            help='The structure to relax and compute.',
        )
        spec.input(
            'engine', valid_type=orm.Str, help="The DFT engine: 'quantumespresso' or 'vasp' (see aiida_hpcai.engines)."
        )
        spec.input('code', valid_type=orm.AbstractCode, help="The engine's code (pw.x or VASP).")
        spec.input(
            'protocol',
            valid_type=orm.Str,
            default=lambda: orm.Str('balanced'),
            help="Protocol name: 'fast', 'balanced' or 'precise' (the engine's YAML file).",
        )
        spec.input(
            'overrides',
            valid_type=orm.Dict,
            required=False,
            help='Nested overrides of the protocol; a key the protocol does not have is an error.',
        )
        spec.input(
            'options',
            valid_type=orm.Dict,
            required=False,
            help='metadata.options of every calculation (resources, max_wallclock_seconds, queue_name, ...).',
        )
        spec.input(
            'magnetic_moments',
            valid_type=orm.Dict,
            required=False,
            help="Initial moments per element (μB per atom); default: the engine's ferromagnetic guess for "
            'V, Cr, Mn, Fe, Co, Ni; {} for no spin polarization.',
        )
        spec.input(
            'relax',
            valid_type=orm.Bool,
            default=lambda: orm.Bool(True),
            help='Relax before the static SCF (False: a single-point energy of the structure as given, e.g. to ask '
            'what a generated, unrelaxed cell is worth).',
        )
        spec.input(
            'relax_cell',
            valid_type=orm.Bool,
            default=lambda: orm.Bool(True),
            help='Relax the cell as well as the positions (False: positions only).',
        )
        spec.input(
            'molecular_crystal',
            valid_type=orm.Bool,
            default=lambda: orm.Bool(False),
            help="A molecular crystal (O2, N2, Cl2 references): fixed cell and the engine's molecular k-point mesh.",
        )
        spec.input(
            'standardize',
            valid_type=orm.Bool,
            default=lambda: orm.Bool(True),
            help='Replace the cell by its standard primitive cell first, so the code finds all symmetries.',
        )
        spec.input(
            'compute_formation_energy',
            valid_type=orm.Bool,
            default=lambda: orm.Bool(True),
            help='Compute the formation energy from elemental references (computed once per identity).',
        )
        spec.input(
            'energy_correction',
            valid_type=orm.Str,
            default=lambda: orm.Str('mp2020'),
            validator=_energy_correction,
            help="Corrections added to the formation energy: 'mp2020' (Materials Project's anion corrections, and "
            "its GGA/GGA+U constants where the engine ran MP's U values: the scale the surrogate learns) or 'none' "
            '(raw DFT). The raw value is always an output too.',
        )
        spec.inputs.validator = validate_inputs

        spec.outline(
            cls.setup,
            cls.check_structure,
            if_(cls.should_standardize)(cls.standardize),
            if_(cls.should_relax)(
                cls.run_relax,
                while_(cls.relax_to_run_again)(cls.run_relax),
                cls.inspect_relax,
            ).else_(
                cls.keep_structure,
            ),
            cls.run_scf,
            while_(cls.scf_to_run_again)(cls.run_scf),
            cls.inspect_scf,
            if_(cls.should_compute_formation_energy)(
                while_(cls.has_references_to_compute)(
                    cls.run_reference,
                    cls.inspect_reference,
                ),
                cls.compute_formation_energy,
            ),
        )

        spec.output(
            'relaxed_structure',
            valid_type=orm.StructureData,
            help='The relaxed structure (the standardized input cell itself when no relaxation runs: relax False, or '
            'a fixed cell in which symmetry fixes every atom).',
        )
        spec.output('total_energy', valid_type=orm.Float, help='Total energy of the relaxed cell (eV), static run.')
        spec.output('energy_per_atom', valid_type=orm.Float, help='Total energy per atom (eV/atom).')
        spec.output(
            'formation_energy_per_atom',
            valid_type=orm.Float,
            required=False,
            help='Formation energy per atom (eV/atom) from elemental references of the same identity, with the '
            'corrections of `energy_correction`.',
        )
        spec.output(
            'formation_energy_per_atom_uncorrected',
            valid_type=orm.Float,
            required=False,
            help='The same without corrections (raw DFT, eV/atom).',
        )
        spec.output(
            'energy_corrections',
            valid_type=orm.Dict,
            required=False,
            help='The corrections added: scheme, adjustments (eV/atom), the elements MP runs with +U here '
            "(`gga_u_elements`), the U values the run applied (`hubbard_u`) and whether the value is on MP's scale "
            '(`on_mp_scale`).',
        )
        spec.output(
            'band_gap',
            valid_type=orm.Float,
            required=False,
            help="Band gap (eV) from the static run's eigenvalues and occupations on its k-point mesh.",
        )
        spec.output('total_magnetization', valid_type=orm.Float, help='Total magnetization of the cell (μB).')
        spec.output(
            'identity', valid_type=orm.Dict, help='engine, protocol, protocol_digest and pseudopotential family.'
        )

        spec.exit_code(
            301,
            'ERROR_MISSING_PSEUDOPOTENTIAL',
            message='element(s) {elements} have no pseudopotential/POTCAR in the family {family}',
        )
        spec.exit_code(
            302,
            'ERROR_REFERENCE_MISSING',
            message='element(s) {elements} have no elemental reference structure, so no formation energy '
            '(run with compute_formation_energy=False, or add them to engines/reference_structures.json)',
        )
        spec.exit_code(
            401, 'ERROR_RELAX_FAILED', message='the relaxation {process} failed with exit status {status} ({cause})'
        )
        spec.exit_code(
            402,
            'ERROR_SCF_NOT_CONVERGED',
            message='the static SCF {process} did not converge, after its own restarts (exit status {status}; {cause})',
        )
        spec.exit_code(
            403, 'ERROR_SCF_FAILED', message='the static SCF {process} failed with exit status {status} ({cause})'
        )
        spec.exit_code(
            404,
            'ERROR_REFERENCE_FAILED',
            message='the elemental reference calculation of {element} ({process}) failed with exit status {status}: '
            '{cause}',
        )

    # -- steps ------------------------------------------------------------------------------------------
    @property
    def engine(self):
        return get_engine(self.inputs.engine.value)

    def setup(self):
        overrides = self.inputs.overrides.get_dict() if 'overrides' in self.inputs else None
        self.ctx.protocol = self.engine.load_protocol(self.inputs.protocol.value, overrides)
        self.ctx.relax_cell = self.inputs.relax_cell.value
        if self.inputs.molecular_crystal.value:
            self.ctx.protocol = self.engine.molecular_crystal_protocol(self.ctx.protocol)
            self.ctx.relax_cell = False
        self.ctx.identity = self.engine.identity(self.inputs.code, self.inputs.protocol.value, self.ctx.protocol)
        self.ctx.options = self.inputs.options.get_dict() if 'options' in self.inputs else None
        moments = self.inputs.get('magnetic_moments')
        self.ctx.magnetic_moments = moments.get_dict() if moments is not None else None
        self.ctx.structure = self.inputs.structure
        self.ctx.reference_energies = {}
        self.ctx.references_to_compute = []

    def check_structure(self):
        """Fail before any calculation for elements without pseudopotential or reference structure."""
        structure = self.inputs.structure
        missing = self.engine.check_structure(structure, self.inputs.code, self.ctx.protocol)
        if missing:
            return self.exit_codes.ERROR_MISSING_PSEUDOPOTENTIAL.format(
                elements=', '.join(missing), family=self.ctx.identity.get('pseudo_family')
            )
        if not self.inputs.compute_formation_energy.value:
            return None
        elements = sorted(structure.get_symbols_set())
        missing = refs.missing_references(elements)
        if missing:
            return self.exit_codes.ERROR_REFERENCE_MISSING.format(elements=', '.join(missing))
        overrides = self.inputs.overrides.get_dict() if 'overrides' in self.inputs else None
        self.ctx.reference_overrides, self.ctx.reference_identity = reference_identity(
            self.engine, self.inputs.code, self.inputs.protocol.value, overrides, structure, self.ctx.protocol
        )
        # References made earlier are looked up now, so only the absent ones are computed later.
        for element in elements:
            node = refs.find_reference(element, self.ctx.reference_identity)
            if node is None and self.is_own_reference(element):
                self.ctx.own_reference = element
                self.report(f'the structure is the {element} reference itself: its own relax + SCF serve as both')
            elif node is None:
                self.ctx.references_to_compute.append(element)
            else:
                self.ctx.reference_energies[element] = node.outputs.energy_per_atom
                self.report(f'reusing the {element} reference {node.process_label}<{node.pk}>')
        return None

    def is_own_reference(self, element: str) -> bool:
        """Whether this WorkChain computes just what the reference WorkChain of ``element`` would compute.

        True for the reference structure itself (pymatgen's StructureMatcher) run with the reference's
        settings: cell relaxed or kept as the reference's is, same standardization, same molecular-crystal
        protocol and the same initial moments (the engine's default for a non-magnetic element is none).
        The protocol is the same: the reference overrides of an elemental structure are its own cutoffs.
        """
        from pymatgen.analysis.structure_matcher import StructureMatcher

        from ..engines.base import MAGNETIC_ELEMENTS

        structure = self.inputs.structure
        if set(structure.get_symbols_set()) != {element}:
            return False
        entry = refs.get_reference_entry(element)
        moments = self.ctx.magnetic_moments
        if moments is None and element not in MAGNETIC_ELEMENTS:
            moments = {}
        settings_match = (
            self.inputs.molecular_crystal.value == entry['molecular_crystal']
            and self.ctx.relax_cell == (not refs.fixed_cell(element))
            and self.inputs.standardize.value
            and moments == refs.get_reference_magnetic_moments(element)
        )
        reference = refs.get_reference_structure(element).get_pymatgen_structure()
        return settings_match and StructureMatcher().fit(structure.get_pymatgen_structure(), reference)

    def should_standardize(self):
        structure = self.inputs.structure
        # Kinds carrying more than the element (e.g. antiferromagnetic sublattices) would be lost.
        same_kinds = all(kind.name == kind.symbol for kind in structure.kinds)
        return self.inputs.standardize.value and same_kinds and all(structure.pbc)

    def standardize(self):
        try:
            self.ctx.structure = standardize_structure(self.inputs.structure)
        except Exception as exception:  # noqa: BLE001 -- spglib/pymatgen failures: the given cell still works
            self.report(f'standardization failed ({exception}); continuing with the given cell')

    def should_relax(self):
        """Relax unless asked not to, or the cell is kept and symmetry fixes every atom
        (:func:`positions_fixed_by_symmetry`)."""
        if not self.inputs.relax.value:
            self.report('relax is False: the static SCF runs on the structure as given')
            return False
        if self.ctx.relax_cell or not positions_fixed_by_symmetry(self.ctx.structure):
            return True
        self.report('fixed cell and every atom fixed by symmetry: nothing to relax, the static SCF runs on this cell')
        return False

    def keep_structure(self):
        self.ctx.relaxed_structure = self.ctx.structure
        self.out('relaxed_structure', self.ctx.relaxed_structure)

    def run_relax(self):
        builder = self.engine.get_relax_builder(
            self.ctx.structure,
            self.inputs.code,
            self.ctx.protocol,
            options=self.ctx.options,
            magnetic_moments=self.ctx.magnetic_moments,
            relax_cell=self.ctx.relax_cell,
        )
        builder.metadata.call_link_label = 'relax'
        node = self.submit(builder)
        self.report(f'launched relaxation {node.process_label}<{node.pk}>')
        return ToContext(relax=node)

    def relax_to_run_again(self):
        return self._run_again(self.ctx.relax, 'relax')

    def scf_to_run_again(self):
        return self._run_again(self.ctx.scf, 'scf')

    def _run_again(self, node, step: str) -> bool:
        """Run ``step`` once more, from scratch, when its WorkChain failed for a cause outside the calculation:

        * a daemon fault cost one of its CalcJobs an output (:func:`lost_to_a_daemon_fault`): the calculation itself
          was fine, and its result is needed;
        * the engine's restart of a run stopped at its wall time failed (the adapter's
          ``failed_restarting_after_walltime``): a run from scratch does not read the stopped run's files.
        """
        reruns = dict(self.ctx.get('reruns', {}))
        if reruns.get(step, 0) >= 1:
            return False
        if lost_to_a_daemon_fault(node):
            cause = 'a CalcJob lost its remote_folder output to a daemon worker killed in the middle of it'
        elif self.engine.failed_restarting_after_walltime(node):
            cause = f'its restart of a calculation stopped at the wall time failed ({failure_cause(node)})'
        else:
            return False
        reruns[step] = reruns.get(step, 0) + 1
        self.ctx.reruns = reruns
        self.report(f'{node.process_label}<{node.pk}> failed because {cause}; running the {step} again from scratch')
        return True

    def inspect_relax(self):
        node = self.ctx.relax
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_RELAX_FAILED.format(
                process=f'{node.process_label}<{node.pk}>', status=node.exit_status, cause=failure_cause(node)
            )
        self.ctx.relaxed_structure = self.engine.get_relaxed_structure(node)
        self.out('relaxed_structure', self.ctx.relaxed_structure)
        return None

    def run_scf(self):
        builder = self.engine.get_scf_builder(
            self.ctx.relaxed_structure,
            self.inputs.code,
            self.ctx.protocol,
            options=self.ctx.options,
            magnetic_moments=self.ctx.magnetic_moments,
        )
        builder.metadata.call_link_label = 'scf'
        node = self.submit(builder)
        self.report(f'launched static SCF {node.process_label}<{node.pk}>')
        return ToContext(scf=node)

    def inspect_scf(self):
        node = self.ctx.scf
        process = f'{node.process_label}<{node.pk}>'
        if not node.is_finished_ok:
            exit_code = self.exit_codes.ERROR_SCF_FAILED
            if self.engine.is_scf_unconverged(node):
                exit_code = self.exit_codes.ERROR_SCF_NOT_CONVERGED
            return exit_code.format(process=process, status=node.exit_status, cause=failure_cause(node))
        outputs = collect_scf_result(
            engine=self.inputs.engine,
            identity=orm.Dict(self.ctx.identity),
            metadata={'call_link_label': 'collect_scf_result'},
            **self.engine.get_scf_result_nodes(node),
        )
        self.out_many(outputs)
        self.ctx.energy_per_atom = outputs['energy_per_atom']
        if 'own_reference' in self.ctx:
            self.ctx.reference_energies[self.ctx.own_reference] = outputs['energy_per_atom']
        return None

    def should_compute_formation_energy(self):
        return self.inputs.compute_formation_energy.value

    def has_references_to_compute(self):
        return bool(self.ctx.references_to_compute)

    def run_reference(self):
        """Compute one missing elemental reference (one at a time: each uses all the cores it is given)."""
        element = self.ctx.references_to_compute[0]
        inputs = reference_inputs(
            element,
            self.inputs.engine,
            self.inputs.code,
            self.inputs.protocol,
            self.ctx.reference_overrides,
            self.inputs.get('options'),
        )
        node = self.submit(DftWorkChain, **inputs)
        self.report(f'launched the {element} reference ({inputs["metadata"]["label"]}) DftWorkChain<{node.pk}>')
        return ToContext(reference=node)

    def inspect_reference(self):
        element = self.ctx.references_to_compute.pop(0)
        node = self.ctx.reference
        if not node.is_finished_ok:
            return self.exit_codes.ERROR_REFERENCE_FAILED.format(
                element=element,
                process=f'{node.process_label}<{node.pk}>',
                status=node.exit_status,
                cause=node.exit_message or 'no message',
            )
        refs.tag_reference(node, element, self.ctx.reference_identity)
        self.ctx.reference_energies[element] = node.outputs.energy_per_atom
        return None

    def compute_formation_energy(self):
        constants = self.engine.gga_u_constants(self.ctx.identity)
        results = compute_formation_energy(
            structure=self.ctx.relaxed_structure,
            energy_per_atom=self.ctx.energy_per_atom,
            energy_correction=self.inputs.energy_correction,
            hubbard_u=orm.Dict(self.engine.hubbard_u(self.ctx.relaxed_structure, self.ctx.protocol)),
            mp_gga_u_constants_apply=orm.Bool(self.engine.mp_gga_u_constants_apply),
            **({'gga_u_constants': orm.Dict(constants)} if constants else {}),
            metadata={'call_link_label': 'compute_formation_energy'},
            **self.ctx.reference_energies,
        )
        self.out_many(results)
        corrections = results['energy_corrections'].get_dict()
        message = f'formation energy {results["formation_energy_per_atom"].value:.4f} eV/atom'
        if corrections['adjustments']:
            names = ', '.join(item['name'] for item in corrections['adjustments'])
            message += f' (raw {results["formation_energy_per_atom_uncorrected"].value:.4f}; {names})'
        if corrections['gga_u_elements'] and not corrections['on_mp_scale']:
            elements = ', '.join(corrections['gga_u_elements'])
            cause = 'whose +U constants were fitted to VASP' if corrections['hubbard_u'] else 'which this run did not'
            message += f"; not on MP's scale: MP runs {elements} here with +U, {cause}"
        self.report(message)
        if 'own_reference' in self.ctx:
            # Found by later WorkChains once this one has finished ok (the look-up asks for exit status 0).
            refs.tag_reference(self.node, self.ctx.own_reference, self.ctx.reference_identity)
