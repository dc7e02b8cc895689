"""The coordinate pattern's front end (planned): request text -> goal, driving the coordinate WorkChain.

See docs/source/architecture.md for the layers and where each piece goes.
"""
