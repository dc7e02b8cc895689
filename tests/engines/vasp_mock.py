"""Test support for the VASP engine: a dummy POTCAR family and a registry for aiida-vasp's ``mock-vasp``.

VASP is licensed and cannot run here; aiida-vasp's strict ``mock-vasp`` stands in for it. It hashes the
parsed INCAR, POSCAR and KPOINTS of the calculation folder and copies in the outputs of the registry entry
(``<registry>/<name>/inp`` + ``<registry>/<name>/out``, found under ``$MOCK_VASP_REG_BASE``) with the same hash,
and fails when there is none. The entries built here pair

* inputs that a test writes with aiida-vasp's own writers (``IncarParser``, ``PoscarParser``,
  ``KpointsParser``, the ones ``VaspCalculation`` uses) from what it *expects* our builders to produce, so a
  builder that writes anything else makes the calculation fail, with
* real VASP outputs (``vasprun.xml``, ``OUTCAR``) from aiida-vasp's test data in ``../shared/data``, plus a
  ``CONTCAR`` (the parser requires one) written from the final structure of that ``vasprun.xml``.

POTCARs are licensed too. Like aiida-vasp's own test suite (its ``tests/test_data/potcar``, "a POTCAR family
used as a test fixture. Contains only unusable POTCAR files"), we upload a family of dummy POTCARs that
only carry the header fields aiida-vasp reads (TITEL, VRHFIN, LEXCH); mock-vasp never reads them.
"""

from __future__ import annotations

import pathlib
import shutil
import sys

DUMMY_POTCAR = """  PAW_PBE {symbol} 01Jan2000
   1.00000000000000
 parameters from PSCTR are:
   VRHFIN ={element}: dummy
   LEXCH  = PE
   EATOM  =     1.0000 eV,    0.0735 Ry

   TITEL  = PAW_PBE {symbol} 01Jan2000
   LULTRA =        F    use ultrasoft PP ?
   POMASS =    1.000; ZVAL   =    1.000    mass and valenz
   ENMAX  =  100.000; ENMIN  =   75.000 eV
   LPAW   =        T    paw PP
 Description
   Dummy POTCAR for tests of aiida-hpcai with mock-vasp; it is not a pseudopotential.
END of PSCTR-controll parameters
 End of Dataset
"""


def upload_dummy_potcar_family(folder: pathlib.Path, label: str, symbols: list[str]) -> None:
    """Upload an aiida-vasp POTCAR family ``label`` of dummy POTCARs for ``symbols`` (e.g. ``['Si', 'Fe_pv']``)."""
    from aiida_vasp.data.potcar import PotcarData

    for symbol in symbols:
        directory = folder / label / symbol
        directory.mkdir(parents=True, exist_ok=True)
        content = DUMMY_POTCAR.format(symbol=symbol, element=symbol.split('_')[0])
        (directory / 'POTCAR').write_text(content, encoding='utf-8')
    PotcarData.upload_potcar_family(
        str(folder / label), label, 'Dummy POTCARs for mock-vasp tests (not usable by VASP)', stop_if_existing=False
    )


def mock_vasp_executable() -> str:
    """Return the absolute path of aiida-vasp's ``mock-vasp`` console script of this Python."""
    candidate = pathlib.Path(sys.executable).parent / 'mock-vasp'
    found = str(candidate) if candidate.is_file() else shutil.which('mock-vasp')
    if found is None:
        raise FileNotFoundError('aiida-vasp console script mock-vasp not found')
    return found


def write_vasp_inputs(folder: pathlib.Path, incar: dict, structure, kpoints) -> None:
    """Write INCAR, POSCAR and KPOINTS into ``folder`` with the writers ``VaspCalculation`` uses.

    The nodes are stored first, as the CalcJob's inputs are: the storage backend may round floats (PostgreSQL
    JSONB keeps 15 significant digits), and the files must show the values the CalcJob will see.
    """
    from aiida import orm
    from aiida_vasp.parsers.content_parsers.incar import IncarParser
    from aiida_vasp.parsers.content_parsers.kpoints import KpointsParser
    from aiida_vasp.parsers.content_parsers.poscar import PoscarParser

    folder.mkdir(parents=True, exist_ok=True)
    parameters = orm.Dict(incar).store()
    for node in (structure, kpoints):
        if not node.is_stored:
            node.store()
    IncarParser(data=parameters, validate_tags=True).write(str(folder / 'INCAR'))
    PoscarParser(data=structure, precision=10).write(str(folder / 'POSCAR'))
    KpointsParser(data=kpoints).write(str(folder / 'KPOINTS'))


def register_calculation(
    registry: pathlib.Path, name: str, incar: dict, structure, kpoints, vasp_output_dir: pathlib.Path
) -> str:
    """Add registry entry ``name``: our expected inputs + the real VASP outputs in ``vasp_output_dir``.

    Returns the entry's hash, as ``mock-vasp`` will compute it from the calculation folder.
    """
    from aiida_vasp.utils.mock_code import VaspMockRegistry
    from pymatgen.io.vasp import Poscar, Vasprun

    entry = registry / name
    write_vasp_inputs(entry / 'inp', incar, structure, kpoints)
    out = entry / 'out'
    out.mkdir(parents=True)
    for filename in ('vasprun.xml', 'OUTCAR'):
        shutil.copy(vasp_output_dir / filename, out / filename)
    run = Vasprun(str(out / 'vasprun.xml'), parse_dos=False, parse_eigen=False, parse_potcar_file=False)
    Poscar(run.final_structure).write_file(str(out / 'CONTCAR'), significant_figures=12)
    return VaspMockRegistry.compute_hash(entry / 'inp')


def mock_report(node) -> str:
    """Return what ``mock-vasp`` printed in the last VASP calculation under ``node`` (why it found no match)."""
    from aiida import orm

    calculations = [child for child in node.called_descendants if isinstance(child, orm.CalcJobNode)]
    if not calculations:
        return f'{node.process_label}<{node.pk}> launched no calculation: {node.exit_message}'
    last = max(calculations, key=lambda child: child.ctime)
    lines = [f'{last.process_label}<{last.pk}> exit status {last.exit_status}']
    written = last.base.repository.list_object_names()
    for name in ('INCAR', 'KPOINTS', 'POSCAR'):
        if name in written:
            lines.append(f'--- {name} written\n' + last.base.repository.get_object_content(name))
    if 'retrieved' in last.outputs and 'vasp_output' in last.outputs.retrieved.base.repository.list_object_names():
        lines.append('--- vasp_output\n' + last.outputs.retrieved.base.repository.get_object_content('vasp_output'))
    return '\n'.join(lines)
