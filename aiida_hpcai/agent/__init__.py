"""The coordinate pattern's front end: request text -> Goal (``goal``, ``planner``, optional ``llm``), the
operations on a profile (``operations``: look up, generate, predict, run DFT within the Goal's budget, status, results)
and their MCP server (``mcp_server``, extra ``mcp``; docs/source/agent.md).

The coordinate WorkChain that works towards a Goal is planned. See docs/source/architecture.md for
the layers and where each piece goes, and docs/source/planner.md for the Goal and the request grammar.
"""
