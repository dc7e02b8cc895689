"""workchains layer of aiida-hpcai (see DESIGN.md)."""

from aiida_hpcai import engine_fixes

# a CalcJob must not wait forever for a scheduler poll that never comes (see engine_fixes)
engine_fixes.apply()
