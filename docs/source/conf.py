"""Sphinx configuration for the aiida-hpcai documentation (MyST markdown)."""
import aiida_hpcai

project = 'aiida-hpcai'
author = 'The aiida-hpcai developers'
release = aiida_hpcai.__version__
extensions = ['myst_parser', 'sphinx.ext.autodoc', 'sphinx.ext.napoleon', 'aiida.sphinxext']
myst_enable_extensions = ['colon_fence', 'deflist']
myst_heading_anchors = 3
source_suffix = {'.md': 'markdown', '.rst': 'restructuredtext'}
html_theme = 'furo'
html_title = 'aiida-hpcai'
exclude_patterns = ['_build']
suppress_warnings = ['myst.header']
