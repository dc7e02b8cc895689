"""pw.x failures inside ``hpcai.dft``: they go through aiida-quantumespresso's restart handlers and end in the
exit codes that docs/source/dft.md documents.

Real pw.x on Si mp-149 (2 atoms, ``fast``, one MPI process). The relaxation's faults come in the first SCF of a
variable-cell relaxation; the static SCF's at fixed cell, where ``hpcai.dft`` runs no relaxation at all (symmetry
fixes Si's atoms) and the static SCF is the first pw.x run. The faults are real pw.x behaviour, triggered by an override or by a
code whose executable is pw.x behind a small wrapper script (the code's description says so):

* an SCF that stops unconverged at ``electron_maxstep`` (a clean stop of pw.x). In a relaxation PwBaseWorkChain's
  handler restarts from scratch with a smaller ``mixing_beta``; in the static SCF it restarts from the last charge
  density with a smaller ``mixing_beta``, which rescues it; at the restart limit ``hpcai.dft`` ends in 401 or 402;
* pw.x killed with SIGKILL in the middle of its first SCF (what a node failure or a hard walltime kill does):
  neither the end of its output nor its XML is written (305); no handler knows that failure, so PwBaseWorkChain
  stops, and ``hpcai.dft`` fails with 401 (relaxation) or 403 (static SCF), the pw.x run's reason in its message.
"""

import os
import shutil
import stat

import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import run_get_node

from aiida_hpcai.workchains.dft import DftWorkChain

from .test_dft import dataset  # noqa: F401 -- the module fixture with Si mp-149

OPTIONS = {'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 1}, 'max_wallclock_seconds': 600}

# SIGKILL once pw.x has printed the first SCF iteration; ``{condition}`` chooses the runs that are killed.
KILLER = """#!/bin/bash
# Stand-in for a node failure or a hard walltime kill: pw.x gets SIGKILL in the middle of its first SCF.
if ! {condition}; then exec {pw} "$@"; fi
{pw} "$@" &
pid=$!
for _ in $(seq 1200); do
    if grep -q 'iteration #' aiida.out 2>/dev/null; then kill -KILL "$pid"; break; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
done
wait "$pid"
"""

# Stand-in for a static SCF that is hard to converge: pw.x's 'scf' runs stop after 4 electronic iterations (a copy
# of the input with electron_maxstep 4); the relaxation runs as given.
CAPPED = """#!/bin/bash
if grep -q "calculation *= *'scf'" aiida.in; then
    sed 's/electron_maxstep *= *[0-9]*/electron_maxstep = 4/' aiida.in > capped.in
    exec {pw} -in capped.in
fi
exec {pw} "$@"
"""


def _wrapped_code(pw_code, tmp_path, label, wrapper, condition='true'):
    """A code on pw.x's computer whose executable is pw.x behind ``wrapper`` (:data:`KILLER`, :data:`CAPPED`)."""
    script = tmp_path / f'{label}.sh'
    script.write_text(wrapper.format(pw=shutil.which('pw.x'), condition=condition))
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return orm.InstalledCode(
        label=f'{label}-{os.getpid()}-{tmp_path.name}',
        computer=pw_code.computer,
        filepath_executable=str(script),
        default_calc_job_plugin='quantumespresso.pw',
        description=f'pw.x behind the fault-injecting wrapper {script}',
    ).store()


def _run(dataset, code, overrides=None, relax_cell=False):  # noqa: F811
    inputs = {
        'structure': orm.StructureData(pymatgen=dataset['mp-149'][1]),
        'engine': orm.Str('quantumespresso'),
        'code': code,
        'protocol': orm.Str('fast'),
        'options': orm.Dict(OPTIONS),
        'relax_cell': orm.Bool(relax_cell),
        'compute_formation_energy': orm.Bool(False),
    }
    if overrides:
        inputs['overrides'] = orm.Dict(overrides)
    return run_get_node(DftWorkChain, **inputs)


def _child(node, label):
    return node.base.links.get_outgoing(link_label_filter=label).one().node


def _calculations(node):
    """The PwCalculations under ``node``, oldest first."""
    return sorted(
        (child for child in node.called_descendants if isinstance(child, orm.CalcJobNode)), key=lambda n: n.ctime
    )


def _stdout(calculation) -> str:
    return calculation.outputs.retrieved.base.repository.get_object_content('aiida.out')


def _reports(node):
    return [log.message for log in orm.Log.collection.get_logs_for(node)]


def _mixing_betas(calculations):
    return [calc.inputs.parameters['ELECTRONS']['mixing_beta'] for calc in calculations]


# -- unconverged SCF ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_unconverged_relaxation_is_restarted_from_scratch_then_401(dataset, pw_code, sssp_family):  # noqa: F811
    """``electron_maxstep`` 4 for every run: the relaxation's SCF stops unconverged (510); the handler restarts it
    from scratch with a smaller ``mixing_beta``, which 4 iterations cannot converge either; at the restart limit
    ``hpcai.dft`` ends in 401 with the last pw.x run's reason, and nothing is attached."""
    from aiida_quantumespresso.calculations.pw import PwCalculation

    overrides = {'parameters': {'ELECTRONS': {'electron_maxstep': 4}}, 'relax': {'max_iterations': 2}}
    results, node = _run(dataset, pw_code, overrides, relax_cell=True)
    assert node.exit_status == DftWorkChain.exit_codes.ERROR_RELAX_FAILED.status
    assert results == {} and not node.base.links.get_outgoing(link_type=LinkType.RETURN).all()
    relax = _child(node, 'relax')
    (base,) = [child for child in relax.called if child.process_label == 'PwBaseWorkChain']
    assert base.exit_status == base.process_class.exit_codes.ERROR_MAXIMUM_ITERATIONS_EXCEEDED.status
    calculations = _calculations(relax)
    unconverged = PwCalculation.exit_codes.ERROR_IONIC_CYCLE_ELECTRONIC_CONVERGENCE_NOT_REACHED.status
    assert [calc.exit_status for calc in calculations] == [unconverged, unconverged]
    # The handler's action: a smaller mixing_beta, from scratch (no parent folder), in the next run's inputs.
    assert _mixing_betas(calculations) == pytest.approx([0.4, 0.8 * 0.4])
    assert 'parent_folder' not in calculations[1].inputs
    assert any('reduced beta mixing' in message for message in _reports(base))
    assert f'PwCalculation<{calculations[-1].pk}> exit status {unconverged}' in node.exit_message
    assert calculations[-1].exit_message in node.exit_message
    assert not [child for child in node.called if child.process_label == 'PwBaseWorkChain']  # no static SCF


@pytest.mark.slow
def test_unconverged_static_scf_is_restarted_from_its_density(dataset, pw_code, sssp_family, tmp_path):  # noqa: F811
    """The static SCF stops after 4 iterations (410); the handler restarts it from the last charge density with a
    smaller ``mixing_beta`` until it converges, and ``hpcai.dft`` finishes ok with the last run's energy."""
    from aiida_quantumespresso.calculations.pw import PwCalculation

    results, node = _run(dataset, _wrapped_code(pw_code, tmp_path, 'pw-scf-capped', CAPPED))
    assert node.is_finished_ok, node.exit_message
    assert {'relaxed_structure', 'total_energy', 'energy_per_atom', 'band_gap'} <= set(results)
    assert not node.base.links.get_outgoing(link_label_filter='relax').all()  # symmetry left nothing to relax
    assert any('nothing to relax' in message for message in _reports(node))
    scf = _child(node, 'scf')
    calculations = _calculations(scf)
    assert len(calculations) >= 2
    unconverged = PwCalculation.exit_codes.ERROR_ELECTRONIC_CONVERGENCE_NOT_REACHED.status
    assert [calc.exit_status for calc in calculations] == [unconverged] * (len(calculations) - 1) + [0]
    assert 'convergence NOT achieved after   4 iterations' in _stdout(calculations[0])
    # The handler's action in the next runs' inputs: mixing_beta times 0.8 each time, restarted from the last run.
    betas = _mixing_betas(calculations)
    assert betas == pytest.approx([0.4 * 0.8**index for index in range(len(calculations))])
    for previous, calc in zip(calculations, calculations[1:]):
        assert calc.inputs.parameters['CONTROL']['restart_mode'] == 'restart'
        assert calc.inputs.parent_folder.pk == previous.outputs.remote_folder.pk
    assert any('reduced beta mixing' in message for message in _reports(scf))
    # The outputs come from the last, converged run.
    assert results['total_energy'].value == pytest.approx(calculations[-1].outputs.output_parameters['energy'])


@pytest.mark.slow
def test_unconverged_static_scf_at_the_restart_limit_is_402(dataset, pw_code, sssp_family, tmp_path):  # noqa: F811
    """The same with one static run allowed (``scf.max_iterations`` 1): ERROR_SCF_NOT_CONVERGED, the pw.x run's reason
    in the message, only the cell attached (no relaxation was needed), no energy of the unconverged run."""
    from aiida_quantumespresso.calculations.pw import PwCalculation

    code = _wrapped_code(pw_code, tmp_path, 'pw-scf-capped-once', CAPPED)
    results, node = _run(dataset, code, {'scf': {'max_iterations': 1}})
    assert node.exit_status == DftWorkChain.exit_codes.ERROR_SCF_NOT_CONVERGED.status
    scf = _child(node, 'scf')
    (calculation,) = _calculations(scf)
    assert calculation.exit_status == PwCalculation.exit_codes.ERROR_ELECTRONIC_CONVERGENCE_NOT_REACHED.status
    assert scf.exit_status == scf.process_class.exit_codes.ERROR_MAXIMUM_ITERATIONS_EXCEEDED.status
    assert any('reduced beta mixing' in message for message in _reports(scf))
    assert f'PwBaseWorkChain<{scf.pk}>' in node.exit_message
    assert f'PwCalculation<{calculation.pk}>' in node.exit_message
    assert calculation.exit_message in node.exit_message
    assert set(results) == {'relaxed_structure'}
    assert not scf.base.links.get_outgoing(link_type=LinkType.RETURN).all()


# -- pw.x killed -------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_pw_killed_during_the_relaxation(dataset, pw_code, sssp_family, tmp_path):  # noqa: F811
    """SIGKILL in the first SCF of the relaxation: the parser finds incomplete output, no handler restarts it,
    and ``hpcai.dft`` ends in 401 naming the killed run and its reason, with no output attached."""
    code = _wrapped_code(pw_code, tmp_path, 'pw-killed', KILLER)
    results, node = _run(dataset, code, relax_cell=True)
    assert node.exit_status == DftWorkChain.exit_codes.ERROR_RELAX_FAILED.status
    assert results == {} and not node.base.links.get_outgoing(link_type=LinkType.RETURN).all()
    relax = _child(node, 'relax')
    assert relax.is_failed
    (calculation,) = _calculations(relax)
    assert calculation.is_failed
    _assert_killed_run(calculation)
    (base,) = [child for child in relax.called if child.process_label == 'PwBaseWorkChain']
    assert base.exit_status == base.process_class.exit_codes.ERROR_UNHANDLED_FAILURE.status
    assert any('unhandled failure, aborting' in message for message in _reports(base))
    assert not [child for child in node.called if child.process_label == 'PwBaseWorkChain']  # no SCF after it
    assert f'PwCalculation<{calculation.pk}>' in node.exit_message
    assert calculation.exit_message in node.exit_message


@pytest.mark.slow
def test_pw_killed_during_the_static_scf(dataset, pw_code, sssp_family, tmp_path):  # noqa: F811
    """Only the static SCF's pw.x is killed: the cell is attached, nothing of the SCF, and 403 says why."""
    code = _wrapped_code(pw_code, tmp_path, 'pw-scf-killed', KILLER, 'grep -q "calculation *= *\'scf\'" aiida.in')
    results, node = _run(dataset, code)
    assert node.exit_status == DftWorkChain.exit_codes.ERROR_SCF_FAILED.status
    assert set(results) == {'relaxed_structure'}
    assert results['relaxed_structure'].creator.process_label == 'standardize_structure'
    scf = _child(node, 'scf')
    (calculation,) = _calculations(scf)
    _assert_killed_run(calculation)
    assert scf.exit_status == scf.process_class.exit_codes.ERROR_UNHANDLED_FAILURE.status
    assert f'PwCalculation<{calculation.pk}>' in node.exit_message
    assert calculation.exit_message in node.exit_message
    assert 'collect_scf_result' not in [link.link_label for link in node.base.links.get_outgoing().all()]


def _assert_killed_run(calculation):
    """A pw.x run killed mid-SCF: its output stops early and the parser says so (what it could read of the output
    it still attaches as the job's ``output_parameters``; the WorkChains above attach nothing of it)."""
    from aiida_quantumespresso.calculations.pw import PwCalculation

    stdout = _stdout(calculation)
    assert 'iteration #' in stdout and 'JOB DONE' not in stdout
    incomplete = {
        PwCalculation.exit_codes.ERROR_OUTPUT_FILES.status,
        PwCalculation.exit_codes.ERROR_OUTPUT_STDOUT_INCOMPLETE.status,
    }
    assert calculation.exit_status in incomplete, calculation.exit_message
    for caller in calculation.caller, calculation.caller.caller:
        if caller.process_label in ('PwBaseWorkChain', 'PwRelaxWorkChain'):
            assert not caller.base.links.get_outgoing(link_type=LinkType.RETURN).all()
