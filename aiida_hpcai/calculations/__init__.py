"""calculations layer of aiida-hpcai (see DESIGN.md)."""
