"""The MCP server (``aiida-hpcai mcp``) through the MCP SDK's own client: a subprocess on the test profile."""

import json
import os

from aiida import orm
from aiida.manage.configuration import get_config
from pymatgen.core import Lattice, Structure

from aiida_hpcai.agent import operations
from aiida_hpcai.data.model import ModelData
from aiida_hpcai.data.structure_set import StructureSet
from tests.conftest import require
from tests.surrogate_helpers import model_program_code, needs_model_program

try:
    import mcp
except ImportError:  # the extra `mcp`; scripts/install.sh installs it, so CI fails instead of skipping
    mcp = None


TOOLS = {'plan', 'look_up', 'predict', 'run_dft', 'generate', 'status', 'results'}


def answer(result) -> dict:
    """The JSON a tool returned (structured content, or the text block that carries the same)."""
    assert not result.is_error, result.content[0].text
    return result.structured_content or json.loads(result.content[0].text)


def refusal(result) -> str:
    assert result.is_error
    return result.content[0].text


def call_server(aiida_profile, calls):
    """Start ``aiida-hpcai -p PROFILE mcp`` with the SDK's stdio client and run ``calls(session)`` against it."""
    import anyio
    from mcp import ClientSession, StdioServerParameters, stdio_client

    config_dir = get_config().dirpath
    server = StdioServerParameters(
        command='aiida-hpcai',
        args=['-p', aiida_profile.name, 'mcp'],
        env={'AIIDA_PATH': str(config_dir), 'PATH': os.environ['PATH']},
    )

    async def main():
        async with stdio_client(server) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            return await calls(session)

    return anyio.run(main)


@needs_model_program
def test_tools_through_the_sdk_client(aiida_profile, aiida_code_installed, tmp_path):
    require(mcp is not None, 'the extra `mcp` (the MCP SDK) is not installed')
    model_program_code(aiida_code_installed)
    rocksalt = Structure.from_spacegroup('Fm-3m', Lattice.cubic(4.21), ['Mg', 'O'], [[0, 0, 0], [0.5, 0.5, 0.5]])
    table = StructureSet.from_pymatgen(
        [rocksalt],
        ids=['mgo-table'],
        labels={'formation_energy_per_atom': [-3.0]},  # a test value in an imported table, not a DFT result
        label='mcp test table',
    ).store()
    tiny = tmp_path / 'MgO.cif'
    rocksalt.get_primitive_structure().to(filename=str(tiny))  # 2 atoms
    goals_before = orm.QueryBuilder().append(orm.Dict, filters={'label': operations.GOAL_NODE_LABEL}).count()

    async def calls(session):
        tools = await session.list_tools()
        goal = answer(
            await session.call_tool('plan', {'request': 'MgO with a formation energy below -2 eV/atom, no DFT runs'})
        )
        bad_request = await session.call_tool('plan', {'request': 'Xq2O3 structures'})
        found = answer(await session.call_tool('look_up', {'goal': goal}))
        predicted = answer(await session.call_tool('predict', {'files': [str(tiny)]}))
        refused = await session.call_tool('run_dft', {'goal': goal, 'structure_set': table.pk, 'ids': ['mgo-table']})
        generated = await session.call_tool('generate', {'model': predicted['model']['pk'], 'composition': 'MgO'})
        state = answer(await session.call_tool('status', {'pk': predicted['process_pk']}))
        outputs = answer(await session.call_tool('results', {'pk': predicted['process_uuid']}))
        return tools, goal, bad_request, found, predicted, refused, generated, state, outputs

    tools, goal, bad_request, found, predicted, refused, generated, state, outputs = call_server(aiida_profile, calls)

    assert {tool.name for tool in tools.tools} == TOOLS
    run_dft_schema = next(tool for tool in tools.tools if tool.name == 'run_dft').input_schema
    assert run_dft_schema['required'] == ['goal'] and 'budget' in next(
        tool.description for tool in tools.tools if tool.name == 'run_dft'
    )

    assert goal['composition'] == 'MgO' and goal['dft_budget'] == 0
    assert goal['bounds'] == {'formation_energy_per_atom': [None, -2.0]}
    assert 'unknown element Xq' in refusal(bad_request)

    table_hits = [hit for hit in found['hits'] if hit['node_uuid'] == table.uuid]
    assert [(hit['id'], hit['source'], hit['node_pk'], hit['index']) for hit in table_hits] == [
        ('mgo-table', 'database', table.pk, 0)
    ]

    (row,) = predicted['rows']
    assert row['id'] == 'MgO.cif' and row['status'] == 'ok'
    assert isinstance(row['mean'], float) and row['sigma'] >= 0
    assert row['needs_dft'] == (row['sigma'] > predicted['sigma_threshold'])
    assert predicted['model']['uuid'] == ModelData.pretrained('formation_energy_per_atom').uuid
    assert state['is_finished_ok'] and state['process_label'] == 'SurrogateWorkChain'
    assert outputs['outputs']['classified_predictions']['rows'] == predicted['rows']

    assert 'dft_budget of 0' in refusal(refused)
    assert orm.QueryBuilder().append(orm.Dict, filters={'label': operations.GOAL_NODE_LABEL}).count() == goals_before
    assert 'cannot generate' in refusal(generated)  # the surrogate model is no generator
