"""An MCP server (stdio) exposing :mod:`aiida_hpcai.agent.operations` as tools; ``aiida-hpcai mcp`` starts it.

Needs the extra ``mcp`` (``pip install aiida-hpcai[mcp]``: the MCP SDK, version 2). Every tool calls the
operation of the same name on the loaded profile and returns its JSON; a refusal (an
:class:`~aiida_hpcai.agent.operations.OperationError`, such as a DFT budget the call would exceed, or a
request the planner cannot read) comes back as a tool error with its one-line message. The only tool
that starts DFT, ``run_dft``, is gated by the Goal's ``dft_budget`` in the operation itself.

The protocol is served on a thread of its own; the operations run on the main thread, one at a time
(:class:`MainThreadWorker`): AiiDA runs a process only on the main thread (it installs signal handlers
to kill it on SIGINT/SIGTERM), and the budget of a Goal is read and spent by one call before the next starts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from typing import Any

from . import operations

__all__ = ('MainThreadWorker', 'create_server', 'serve')

SERVER_NAME = 'aiida-hpcai'
INSTRUCTIONS = (
    'Materials discovery on an AiiDA profile. Turn a request into a Goal with `plan`, find what the profile '
    'already holds with `look_up`, sample candidates with `generate`, predict properties with the shipped '
    "surrogate with `predict`, and submit DFT with `run_dft` (refused beyond the Goal's dft_budget); follow processes with `status` "
    'and read them with `results`. Energies in eV/atom, band gaps in eV.'
)


class MainThreadWorker:
    """Runs the calls other threads :meth:`submit`, one at a time, on the thread that calls :meth:`run`."""

    _STOP = object()

    def __init__(self):
        self._jobs: queue.Queue = queue.Queue()

    def submit(self, function, **kwargs) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((function, kwargs, future))
        return future

    def stop(self) -> None:
        self._jobs.put(self._STOP)

    def run(self) -> None:
        """Run submitted calls until :meth:`stop`."""
        while (job := self._jobs.get()) is not self._STOP:
            function, kwargs, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(function(**kwargs))
            except Exception as exception:  # noqa: BLE001 -- handed to the caller waiting on the future
                future.set_exception(exception)


def create_server(worker: MainThreadWorker):
    """The MCP server with one tool per operation (``mcp.server.mcpserver.MCPServer``); ``worker`` runs them."""
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    server = MCPServer(SERVER_NAME, instructions=INSTRUCTIONS)

    async def call(operation, **kwargs) -> dict[str, Any]:
        try:
            return await asyncio.wrap_future(worker.submit(operation, **kwargs))
        except operations.REFUSALS as exception:
            unparsed = getattr(exception, 'unparsed', None)
            suffix = f' (unparsed: {" ".join(unparsed)})' if unparsed else ''
            raise ToolError(f'{exception}{suffix}') from None

    @server.tool()
    async def plan(request: str) -> dict[str, Any]:
        """Read a materials request (one sentence) into a Goal: composition, chemsys, must_include, exclude,
        count, bounds {property: [min, max]} (formation_energy_per_atom and energy_above_hull in eV/atom,
        band_gap in eV), spacegroup, crystal_system, objective, dft_budget. Deterministic; a word it cannot
        place refuses the request."""
        return await call(operations.plan, request=request)

    @server.tool()
    async def look_up(goal: dict[str, Any], limit: int = 50) -> dict[str, Any]:
        """Finished DFT results (hpcai.dft) and labelled entries of imported StructureSets in the profile that
        satisfy the Goal (a Goal as `plan` returns it). Each hit names its source node (pk, uuid)."""
        return await call(operations.look_up, goal=goal, limit=limit)

    @server.tool()
    async def predict(
        structure_set: int | str | None = None,
        files: list[str] | None = None,
        target: str = 'formation_energy_per_atom',
        sigma_threshold: float | None = None,
    ) -> dict[str, Any]:
        """Predict a property (formation_energy_per_atom or band_gap) with the shipped surrogate ensemble for a
        stored StructureSet (pk or uuid) or structure files on the server's machine (CIF, POSCAR, extxyz).
        Returns per id the mean, sigma and needs_dft (sigma above the threshold). Runs to the end."""
        return await call(
            operations.predict, structure_set=structure_set, files=files, target=target, sigma_threshold=sigma_threshold
        )

    @server.tool()
    async def run_dft(
        goal: dict[str, Any],
        structure_pks: list[int | str] | None = None,
        structure_set: int | str | None = None,
        ids: list[str] | None = None,
        engine: str = 'quantumespresso',
        protocol: str | None = None,
        code: str | None = None,
    ) -> dict[str, Any]:
        """Submit DFT (relax, SCF, formation energy) to the daemon for StructureData nodes (structure_pks) or a
        StructureSet (all of it or its entries `ids`), one calculation per structure. Refused when it would
        take the Goal past its dft_budget, counting what was already started for the same Goal."""
        return await call(
            operations.run_dft,
            goal=goal,
            structure_pks=structure_pks,
            structure_set=structure_set,
            ids=ids,
            engine=engine,
            protocol=protocol,
            code=code,
        )

    @server.tool()
    async def generate(
        model: int | str,
        composition: str | None = None,
        count: int = 10,
        seed: int = 0,
        steps: int | None = None,
        elements: list[str] | None = None,
        required_elements: list[str] | None = None,
    ) -> dict[str, Any]:
        """Sample crystal structures with a generative model (EquiCSP ModelData, pk or uuid): `count` samples of
        `composition` (the formula of one cell), or, without one, ab initio, optionally restricted to `elements`
        (only these, each present: ["Fe", "O"] is the Fe-O system) and `required_elements` (present in every
        sample). Returns the StructureSet of the valid samples (ids <formula>#<k>) and the invalid ones with
        reasons. Runs to the end."""
        return await call(
            operations.generate,
            model=model,
            composition=composition,
            count=count,
            seed=seed,
            steps=steps,
            elements=elements,
            required_elements=required_elements,
        )

    @server.tool()
    async def status(pk: int | str) -> dict[str, Any]:
        """State of a process (pk or uuid) and of the processes it called, with the Goal it was started for."""
        return await call(operations.status, pk=pk)

    @server.tool()
    async def results(pk: int | str) -> dict[str, Any]:
        """Outputs of a finished process (pk or uuid) as JSON: values, prediction rows, ids, node pks."""
        return await call(operations.results, pk=pk)

    return server


def serve() -> None:
    """Serve the tools over stdin/stdout until the client closes them (the profile must be loaded).

    Call from the main thread: the protocol runs on another thread, the operations on this one.
    """
    worker = MainThreadWorker()
    server = create_server(worker)

    def protocol():
        try:
            server.run('stdio')
        finally:
            worker.stop()

    threading.Thread(target=protocol, name='mcp-stdio', daemon=True).start()
    worker.run()
