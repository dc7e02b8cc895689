"""EquiCSP (Lin et al., ICML 2024, built on DiffCSP, Jiao et al. 2023): a periodic E(3)-equivariant
diffusion model that proposes crystal structures, registered as architecture ``equicsp``.

- :mod:`.network`: the denoiser and its configs (``tiny``, ``cpu``, ``paper``);
- :mod:`.training`: the ``hpcai-model train`` task for this architecture (resumable, ``max_minutes``);
- :mod:`.generation`: the ``hpcai-model generate`` task (CSP and ab initio sampling, validity checks).

The diffusion processes, losses and the sampler, which do not depend on the network, are in
:mod:`aiida_hpcai.models.diffusion`.
"""
