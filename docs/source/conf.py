"""Sphinx configuration for the aiida-hpcai documentation (MyST markdown)."""

import pathlib
import sys

from aiida.manage.configuration import load_profile
from aiida.storage.sqlite_temp import SqliteTempBackend

import aiida_hpcai

sys.path.insert(0, str(pathlib.Path(__file__).parent / '_ext'))

# aiida's process directives (`aiida-calcjob`, `aiida-workchain`) need a profile; an in-memory one suffices.
load_profile(SqliteTempBackend.create_profile('docs'), allow_switch=True)

project = 'aiida-hpcai'
author = 'The aiida-hpcai developers'
release = aiida_hpcai.__version__
extensions = ['myst_parser', 'sphinx.ext.autodoc', 'sphinx.ext.napoleon', 'aiida.sphinxext', 'exit_codes']
myst_enable_extensions = ['colon_fence', 'deflist']
myst_heading_anchors = 3
source_suffix = {'.md': 'markdown', '.rst': 'restructuredtext'}
html_theme = 'furo'
html_title = 'aiida-hpcai'
exclude_patterns = ['_build', '_ext']
suppress_warnings = ['myst.header']
