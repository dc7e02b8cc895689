"""``aiida-hpcai mcp``: serve the coordinate pattern's operations to an MCP client over stdio."""

from __future__ import annotations

import click
from aiida.cmdline.utils import decorators

from . import cli


@cli.command('mcp')
@decorators.with_dbenv()
def mcp():
    """Serve plan, look_up, generate, predict, run_dft, status and results as MCP tools over stdin/stdout.

    An MCP client starts it; register the command line, e.g. `aiida-hpcai -p PROFILE mcp`. run_dft is
    refused beyond the Goal's DFT budget. Needs the extra `mcp` (pip install 'aiida-hpcai[mcp]').
    """
    try:
        from mcp.server.mcpserver import MCPServer  # noqa: F401 -- the SDK's version 2 API

        from aiida_hpcai.agent.mcp_server import serve
    except ImportError as exception:
        raise click.ClickException(
            f'the MCP server needs the MCP SDK (version 2): pip install "aiida-hpcai[mcp]" ({exception})'
        ) from None
    serve()
