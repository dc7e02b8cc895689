"""Joint diffusion of crystals (DiffCSP, Jiao et al. 2023; EquiCSP, Lin et al. 2024), independent of the network.

A crystal is ``(L, F, A)``: lattice, fractional coordinates, atom types. Each has its own
forward process, all sharing one time index ``t`` in ``1..T``:

- **Lattice** (DDPM, cosine schedule): the state is EquiCSP's six rotation-invariant lattice
  parameters, ``log`` of each length (less ``log(N) / 3``, so cells of different sizes share a
  scale) and ``tan(angle - pi/2)`` of the angle opposite each axis, standardised with scalars of
  the training set (one scale for the three lengths, one for the three angles, so permuting the
  axes permutes the state). ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``; the network
  predicts ``eps``.
- **Fractional coordinates** (score matching on the torus): ``F_t = F_0 + sigma_t eps mod 1``
  with ``sigma_t`` geometric from ``sigma_begin`` to ``sigma_end``; the target is the score of
  the wrapped normal, divided by its root mean square at ``sigma_t`` so every t weighs alike.
  The displacement is centred per crystal before wrapping: a denoiser that sees only
  differences of coordinates cannot tell a rigid translation, so none is put in.
- **Atom types** (ab initio only; DDPM on one-hot vectors over the model's elements). Sampling can be
  restricted to a set of elements (:class:`TypeRestriction`): at every step the predicted clean type
  vectors are projected onto the allowed elements (the columns of the others set to 0, the clean value
  of every allowed one-hot) and, when some elements are required, the atoms that the best assignment
  covering every required element moves are set to the one-hot of their new element, so the geometry
  follows the constrained types for the rest of the chain; the final types are that assignment.

Loss weights follow the papers: lattice 1, coordinates 1, types 20 for ab initio samples; a CSP
sample (composition given) has clean types and no type loss. The predictor-corrector sampler
(Song et al. 2021, as in DiffCSP) takes a Langevin corrector step on ``F`` and then an
ancestral predictor step on everything; fewer sampling steps than training steps use the
respaced chain of the same schedules.

The denoiser is any callable ``denoiser(t, types, known, frac, gram, num_atoms, batch)``
returning ``(eps_lattice (B, 6), score (n, 3), eps_types (n, K))`` (see :mod:`.equicsp`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from .contract import SAMPLING_PRECISIONS

TYPE_LOSS_WEIGHT = 20.0  # DiffCSP / EquiCSP ab initio configs (cost_type)
X0_CLIP = 5.0  # bound of a predicted clean lattice or type state (standardised; one-hot types lie in [0, 1])
_IMAGES = 10  # periodic images summed in the wrapped normal (enough for sigma <= 1)


# -- schedules -----------------------------------------------------------------------------------
def cosine_alphas_cumprod(timesteps: int, offset: float = 0.008) -> torch.Tensor:
    """``abar_t`` for t = 0..T of the cosine schedule (Nichol & Dhariwal 2021), betas clipped to [1e-4, 0.9999]."""
    x = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64)
    f = torch.cos((x / timesteps + offset) / (1 + offset) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(1e-4, 0.9999)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])


def _centred(x: torch.Tensor) -> torch.Tensor:
    """``x`` moved by a whole number into [-0.5, 0.5]: both functions below are periodic, and the
    images summed then cover any x."""
    return x - torch.round(x)


def wrapped_normal_log_density(x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """``log p(x)`` (unnormalised by the constant) of the normal of width ``sigma`` wrapped onto [0, 1)."""
    k = torch.arange(-_IMAGES, _IMAGES + 1, dtype=x.dtype, device=x.device)
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)[..., None]
    return torch.logsumexp(-((_centred(x)[..., None] + k) ** 2) / (2 * sigma**2), dim=-1)


def wrapped_normal_score(x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """``d/dx log p(x)`` of the wrapped normal: the image-weighted mean of ``-(x + k) / sigma^2``
    (softmax weights, so it stays finite for sigma = 0.005, where the plain sum underflows)."""
    k = torch.arange(-_IMAGES, _IMAGES + 1, dtype=x.dtype, device=x.device)
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)[..., None]
    shifted = _centred(x)[..., None] + k
    weights = torch.softmax(-(shifted**2) / (2 * sigma**2), dim=-1)
    return -(weights * shifted).sum(-1) / sigma[..., 0] ** 2


def score_mean_square(sigmas: torch.Tensor, nodes: int = 64) -> torch.Tensor:
    """``E[score^2]`` of the wrapped normal for each sigma, over ``x = sigma z`` with ``z`` standard
    normal by Gauss-Hermite quadrature (DiffCSP estimates it from 10,000 random draws; the quadrature is
    deterministic, and exact, ``1 / sigma^2``, where the wrapping does not matter)."""
    z, weights = np.polynomial.hermite_e.hermegauss(nodes)
    z, weights = torch.as_tensor(z), torch.as_tensor(weights / weights.sum())
    sigmas = sigmas.double()[:, None]
    return (weights * wrapped_normal_score(sigmas * z, sigmas) ** 2).sum(-1)


@dataclasses.dataclass
class Schedules:
    """The three forward processes' constants for t = 0..T (index 0: no noise)."""

    timesteps: int = 1000
    sigma_begin: float = 0.005
    sigma_end: float = 0.5

    def __post_init__(self):
        self.alphas_cumprod = cosine_alphas_cumprod(self.timesteps)
        sigmas = torch.exp(torch.linspace(math.log(self.sigma_begin), math.log(self.sigma_end), self.timesteps))
        self.sigmas = torch.cat([torch.zeros(1, dtype=torch.float64), sigmas.double()])
        self.score_norms = torch.cat([torch.ones(1, dtype=torch.float64), score_mean_square(sigmas).sqrt()])

    def tables(self, device, dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(alphas_cumprod, sigmas, score_norms)`` on ``device`` as ``dtype`` (kept in float64 here)."""
        return tuple(
            table.to(device=device, dtype=dtype) for table in (self.alphas_cumprod, self.sigmas, self.score_norms)
        )


# -- lattice representation ----------------------------------------------------------------------
def cell_to_parameters(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lengths (B, 3) and angles (B, 3, radians; angle ``a`` is between the two other axes) of cells
    given as rows; computed from the Gram matrix ``L L^T`` alone, so a rotated cell gives the same."""
    gram = cells @ np.swapaxes(cells, -1, -2)
    lengths = np.sqrt(np.diagonal(gram, axis1=-2, axis2=-1))
    others = [(1, 2), (0, 2), (0, 1)]
    cosines = np.stack([gram[:, b, c] / (lengths[:, b] * lengths[:, c]) for b, c in others], axis=-1)
    return lengths, np.arccos(np.clip(cosines, -1.0, 1.0))


def parameters_to_gram(lengths: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Gram matrices (B, 3, 3) from lengths and angles (angle ``a`` opposite axis ``a``)."""
    cos = torch.cos(angles)
    ab = lengths[:, 0] * lengths[:, 1] * cos[:, 2]
    ac = lengths[:, 0] * lengths[:, 2] * cos[:, 1]
    bc = lengths[:, 1] * lengths[:, 2] * cos[:, 0]
    squares = lengths**2
    rows = [
        torch.stack([squares[:, 0], ab, ac], -1),
        torch.stack([ab, squares[:, 1], bc], -1),
        torch.stack([ac, bc, squares[:, 2]], -1),
    ]
    return torch.stack(rows, -2)


def parameters_to_cell(lengths: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Cells (B, 3, 3; a along x, b in the xy plane) from lengths and angles; NaN rows where the
    angles admit no cell (non-positive volume)."""
    a, b, c = lengths[:, 0], lengths[:, 1], lengths[:, 2]
    cos_alpha, cos_beta, cos_gamma = np.cos(angles[:, 0]), np.cos(angles[:, 1]), np.cos(angles[:, 2])
    sin_gamma = np.sin(angles[:, 2])
    cells = np.zeros((len(lengths), 3, 3))
    cells[:, 0, 0] = a
    cells[:, 1, 0], cells[:, 1, 1] = b * cos_gamma, b * sin_gamma
    cy = (cos_alpha - cos_beta * cos_gamma) / sin_gamma
    with np.errstate(invalid='ignore'):
        cz2 = 1.0 - cos_beta**2 - cy**2
        cells[:, 2] = np.stack([c * cos_beta, c * cy, c * np.where(cz2 > 0, np.sqrt(cz2), np.nan)], axis=-1)
    return cells


@dataclasses.dataclass
class LatticeScaler:
    """Standardisation of the lattice state: one mean and scale for the three log lengths (per
    cube root of the atom count), one scale for the three ``tan(angle - pi/2)``."""

    log_length_mean: float = 0.0
    log_length_std: float = 1.0
    angle_std: float = 1.0

    @classmethod
    def fit(cls, cells: np.ndarray, num_atoms: np.ndarray) -> LatticeScaler:
        lengths, angles = cell_to_parameters(cells)
        log_lengths = np.log(lengths) - np.log(num_atoms)[:, None] / 3
        tangents = np.tan(angles - np.pi / 2)
        # floors: a set of cubic cells alone (perov_5) has no spread of angles to scale by
        return cls(float(log_lengths.mean()), float(max(log_lengths.std(), 0.05)), float(max(tangents.std(), 0.1)))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def encode(self, cells: np.ndarray, num_atoms: np.ndarray) -> np.ndarray:
        """Cells (B, 3, 3) -> standardised state (B, 6)."""
        lengths, angles = cell_to_parameters(cells)
        log_lengths = np.log(lengths) - np.log(num_atoms)[:, None] / 3
        return np.concatenate(
            [(log_lengths - self.log_length_mean) / self.log_length_std, np.tan(angles - np.pi / 2) / self.angle_std],
            axis=-1,
        )

    def lengths_angles(self, state: torch.Tensor, num_atoms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """State (B, 6) -> lengths (Angstrom) and angles (radians, in (0, pi))."""
        log_lengths = state[:, :3] * self.log_length_std + self.log_length_mean
        lengths = torch.exp(log_lengths + torch.log(num_atoms.to(state.dtype))[:, None] / 3)
        angles = torch.atan(state[:, 3:] * self.angle_std) + math.pi / 2
        return lengths, angles

    def gram(self, state: torch.Tensor, num_atoms: torch.Tensor) -> torch.Tensor:
        return parameters_to_gram(*self.lengths_angles(state, num_atoms))


# -- training loss -------------------------------------------------------------------------------
def segment_mean(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Mean of the rows of ``values`` sharing an ``index`` (one row per segment)."""
    total = torch.zeros((size, *values.shape[1:]), dtype=values.dtype, device=values.device).index_add_(
        0, index, values
    )
    count = torch.zeros(size, dtype=values.dtype, device=values.device).index_add_(
        0, index, torch.ones_like(index, dtype=values.dtype)
    )
    return total / count.clamp(min=1).view(-1, *([1] * (values.dim() - 1)))


def centred(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """``values`` less their crystal's mean: the part of a displacement or score that is not a rigid translation."""
    return values - segment_mean(values, index, size)[index]


@dataclasses.dataclass
class CrystalBatch:
    """Crystals concatenated: per atom ``types`` (indices into the model's elements), ``frac`` (n, 3)
    and ``batch`` (crystal of each atom); per crystal ``lattice`` (standardised state, B x 6) and
    ``num_atoms``."""

    types: torch.Tensor
    frac: torch.Tensor
    lattice: torch.Tensor
    num_atoms: torch.Tensor

    @property
    def batch(self) -> torch.Tensor:
        return torch.repeat_interleave(torch.arange(len(self.num_atoms), device=self.num_atoms.device), self.num_atoms)

    def to(self, device) -> CrystalBatch:
        return CrystalBatch(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))


def diffusion_loss(
    denoiser,
    batch: CrystalBatch,
    schedules: Schedules,
    scaler: LatticeScaler,
    num_elements: int,
    csp_fraction: float = 1.0,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """The training loss on one batch at random times; each crystal is a CSP sample (clean types,
    no type loss) with probability ``csp_fraction``, an ab initio one otherwise."""
    device, dtype = batch.frac.device, batch.frac.dtype
    size, index = len(batch.num_atoms), batch.batch
    t = torch.randint(1, schedules.timesteps + 1, (size,), generator=generator).to(device)
    known = (torch.rand(size, generator=generator) < csp_fraction).to(device)

    def noise(shape):
        return torch.randn(shape, generator=generator, dtype=dtype).to(device)

    abar_all, sigmas, norms = schedules.tables(device, dtype)
    abar = abar_all[t]
    eps_lattice = noise(batch.lattice.shape)
    lattice_t = abar.sqrt()[:, None] * batch.lattice + (1 - abar).sqrt()[:, None] * eps_lattice

    sigma = sigmas[t][index][:, None]
    displacement = sigma * noise(batch.frac.shape)
    displacement = centred(displacement, index, size)
    frac_t = (batch.frac + displacement) % 1.0
    target_score = wrapped_normal_score(displacement, sigma)
    target_score = centred(target_score, index, size) / norms[t][index][:, None]

    onehot = torch.nn.functional.one_hot(batch.types, num_elements).to(dtype)
    eps_types = noise(onehot.shape)
    abar_atoms = abar[index][:, None]
    noisy_types = abar_atoms.sqrt() * onehot + (1 - abar_atoms).sqrt() * eps_types
    types_in = torch.where(known[index][:, None], onehot, noisy_types)

    gram = scaler.gram(lattice_t, batch.num_atoms)
    pred_lattice, pred_score, pred_types = denoiser(t, types_in, known, frac_t, gram, batch.num_atoms, index)
    loss_lattice = torch.nn.functional.mse_loss(pred_lattice, eps_lattice)
    # a translation-invariant network cannot see a rigid shift: only the centred score is learned
    loss_coord = torch.nn.functional.mse_loss(centred(pred_score, index, size), target_score)
    abinitio = ~known[index]
    loss_type = (
        torch.nn.functional.mse_loss(pred_types[abinitio], eps_types[abinitio])
        if abinitio.any()
        else torch.zeros((), dtype=dtype, device=device)
    )
    # the type term counts in proportion to the ab initio atoms of the batch
    weight = TYPE_LOSS_WEIGHT * abinitio.to(dtype).mean()
    total = loss_lattice + loss_coord + weight * loss_type
    return {'loss': total, 'lattice': loss_lattice, 'coord': loss_coord, 'type': loss_type}


# -- sampling ------------------------------------------------------------------------------------
@dataclasses.dataclass
class TypeRestriction:
    """Ab initio types limited to ``allowed`` (element indices) with each of ``required`` (a subset) in every
    crystal; a crystal needs at least ``len(required)`` atoms."""

    allowed: list[int]
    required: list[int] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        self.allowed, self.required = sorted(set(self.allowed)), sorted(set(self.required))
        if not self.allowed:
            raise ValueError('a type restriction needs at least one allowed element')
        if not set(self.required) <= set(self.allowed):
            raise ValueError(f'required elements {self.required} are not all allowed ({self.allowed})')

    def mask(self, num_elements: int, device) -> torch.Tensor:
        allowed = torch.zeros(num_elements, dtype=torch.bool, device=device)
        allowed[self.allowed] = True
        return allowed

    def assign(self, scores: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
        """Element index per atom: the allowed element of highest score, except where a crystal lacks a required
        element; there the assignment of most total score that holds every required element (each required
        element gets a distinct atom, matched at least cost ``best - score`` by the Hungarian method; an atom
        that already holds it costs nothing; the other atoms keep their best)."""
        from scipy.optimize import linear_sum_assignment

        allowed = self.mask(scores.shape[-1], scores.device)
        masked = scores.masked_fill(~allowed, -torch.inf)
        best, types = masked.max(-1)
        if not self.required:
            return types
        required = torch.as_tensor(self.required, device=scores.device)
        present = torch.zeros((size, scores.shape[-1]), dtype=torch.long, device=scores.device)
        present.index_put_((index, types), torch.ones_like(types), accumulate=True)
        lacking = (present[:, required] == 0).any(-1).nonzero().flatten().tolist()
        for crystal in lacking:
            atoms = (index == crystal).nonzero().flatten()
            regret = (best[atoms, None] - masked[atoms][:, required]).double().cpu().numpy()  # (atoms, required)
            rows, columns = linear_sum_assignment(regret.T)  # needs atoms >= required elements
            rows, columns = (torch.as_tensor(x, device=scores.device) for x in (rows, columns))
            types[atoms[columns]] = required[rows]
        return types

    def project(self, clean: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
        """Predicted clean type vectors moved onto the restriction (see the module docstring)."""
        allowed = self.mask(clean.shape[-1], clean.device)
        clean = clean.masked_fill(~allowed, 0.0)
        if not self.required:
            return clean
        types = self.assign(clean, index, size)
        moved = types != clean.masked_fill(~allowed, -torch.inf).argmax(-1)
        onehot = torch.nn.functional.one_hot(types, clean.shape[-1]).to(clean.dtype)
        return torch.where(moved[:, None], onehot, clean)


def sampling_times(timesteps: int, steps: int) -> list[int]:
    """The decreasing times visited by a sampler of ``steps`` steps (all of 1..T when steps >= T)."""
    steps = max(1, min(int(steps), timesteps))
    return sorted({int(round(v)) for v in np.linspace(timesteps, 1, steps)}, reverse=True)


@torch.no_grad()
def sample(
    denoiser,
    num_atoms: torch.Tensor,
    schedules: Schedules,
    scaler: LatticeScaler,
    num_elements: int,
    types: torch.Tensor | None = None,
    steps: int | None = None,
    step_lr: float = 1e-5,
    generator: torch.Generator | None = None,
    dtype=torch.float32,
    device='cpu',
    restriction: TypeRestriction | None = None,
    precision: str = 'float32',
) -> dict[str, torch.Tensor]:
    """Predictor-corrector sampling of ``len(num_atoms)`` crystals; ``types`` (indices, one per atom)
    given is CSP, None is ab initio (types sampled too, within ``restriction`` when given). Returns the
    final ``lattice`` state, ``frac``, ``types`` and the cells' ``lengths``/``angles``.

    ``precision`` (:data:`SAMPLING_PRECISIONS`) is that of the denoiser's matrix products: ``bfloat16`` runs
    them under autocast, while the sampler's own state and updates stay in ``dtype``."""
    if precision not in SAMPLING_PRECISIONS:
        raise ValueError(f'unknown sampling precision {precision!r}; known: {list(SAMPLING_PRECISIONS)}')
    num_atoms = num_atoms.to(device)
    size, n = len(num_atoms), int(num_atoms.sum())
    index = torch.repeat_interleave(torch.arange(size, device=device), num_atoms)

    def noise(*shape):
        return torch.randn(shape, generator=generator, dtype=dtype).to(device)

    known = torch.full((size,), types is not None, device=device)
    if restriction is not None and types is not None:
        raise ValueError('a type restriction applies to ab initio sampling; CSP samples have their types')
    if restriction is not None and int(num_atoms.min()) < len(restriction.required):
        raise ValueError(f'{len(restriction.required)} required elements need at least as many atoms per crystal')
    project = None if restriction is None else (lambda clean: restriction.project(clean, index, size))
    lattice = noise(size, 6)
    frac = torch.rand((n, 3), generator=generator, dtype=dtype).to(device)
    type_state = (
        torch.nn.functional.one_hot(types.to(device), num_elements).to(dtype)
        if types is not None
        else noise(n, num_elements)
    )
    times = sampling_times(schedules.timesteps, steps or schedules.timesteps)
    abar, sigmas, norms = schedules.tables(device, dtype)

    def denoise(t_batch, frac, gram):
        with torch.autocast(torch.device(device).type, torch.bfloat16, enabled=precision == 'bfloat16'):
            outputs = denoiser(t_batch, type_state, known, frac, gram, num_atoms, index)
        return [output.to(dtype) for output in outputs]

    for position, t in enumerate(times):
        t_prev = times[position + 1] if position + 1 < len(times) else 0
        t_batch = torch.full((size,), t, device=device)
        gram = scaler.gram(lattice, num_atoms)

        # corrector: one Langevin step on the coordinates at this noise level (none at the last)
        step = step_lr * (sigmas[t] / sigmas[1]) ** 2
        score = centred(denoise(t_batch, frac, gram)[1], index, size) * norms[t]
        frac = (frac + step * score + (t_prev > 0) * torch.sqrt(2 * step) * noise(n, 3)) % 1.0

        # predictor: the reverse step t -> t_prev of every process
        pred_lattice, score, pred_types = denoise(t_batch, frac, gram)
        spread = sigmas[t] ** 2 - sigmas[t_prev] ** 2
        frac_std = torch.sqrt(sigmas[t_prev] ** 2 * spread / sigmas[t] ** 2)
        frac = (frac + spread * centred(score, index, size) * norms[t] + frac_std * noise(n, 3)) % 1.0
        lattice = _ddpm_step(lattice, pred_lattice, abar[t], abar[t_prev], noise(size, 6))
        if types is None:
            type_state = _ddpm_step(
                type_state, pred_types, abar[t], abar[t_prev], noise(n, num_elements), project=project
            )
    lengths, angles = scaler.lengths_angles(lattice, num_atoms)
    if types is not None:
        final_types = types.to(device)
    elif restriction is not None:
        final_types = restriction.assign(type_state, index, size)
    else:
        final_types = type_state.argmax(-1)
    return {'lattice': lattice, 'frac': frac, 'types': final_types, 'lengths': lengths, 'angles': angles}


def _ddpm_step(state, eps, abar_t, abar_prev, fresh_noise, clip: float = X0_CLIP, project=None):
    """Ancestral DDPM step from ``t`` to ``t_prev`` (respaced: alpha = abar_t / abar_prev) through the
    predicted clean state, clipped to ``+-clip`` (the DDPM sampler's clipping): near t = T, abar_t is
    ~1e-10 and an error of the predicted noise would otherwise be amplified ~1e5-fold. ``project``, when
    given, maps the clean state onto the states allowed (a :class:`TypeRestriction`)."""
    alpha = abar_t / abar_prev
    clean = ((state - torch.sqrt(1 - abar_t) * eps) / torch.sqrt(abar_t)).clamp(-clip, clip)
    if project is not None:
        clean = project(clean)
    mean = (torch.sqrt(abar_prev) * (1 - alpha) * clean + torch.sqrt(alpha) * (1 - abar_prev) * state) / (1 - abar_t)
    return mean + torch.sqrt((1 - alpha) * (1 - abar_prev) / (1 - abar_t)) * fresh_noise
