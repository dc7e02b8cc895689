"""Pure PyTorch / e3nn / numpy / pymatgen science of aiida-hpcai.

Nothing in this package imports ``aiida``: it is what runs on a compute node inside a CalcJob
(``hpcai-model``), and it can be used, tested and benchmarked without an AiiDA profile.
"""
