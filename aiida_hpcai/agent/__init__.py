"""The coordinate pattern's front end: request text -> Goal (``goal``, ``planner``, optional ``llm``).

The coordinate WorkChain that works towards a Goal is planned. See docs/source/architecture.md for
the layers and where each piece goes, and docs/source/planner.md for the Goal and the request grammar.
"""
