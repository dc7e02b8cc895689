"""engines layer of aiida-hpcai (see DESIGN.md)."""
