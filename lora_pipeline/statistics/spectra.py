"""The adapter measures of the LoRA paper (arXiv:2106.09685 §7): singular values of ΔW = scaling·B·A from the
factors, effective rank, and the normalised subspace similarity φ between two adapters' A matrices."""

from __future__ import annotations

import numpy as np

from ..errors import PipelineError

__all__ = ["delta_singular_values", "effective_rank", "subspace_similarity", "subspace_similarity_grid"]

def delta_singular_values(a: np.ndarray, b: np.ndarray, scaling: float) -> np.ndarray:
    """Singular values (descending) of ``ΔW = scaling · B · A`` from the factors alone.

    ``a`` is a ``LoRALayer``'s ``lora_a`` (r, in), ``b`` its ``lora_b`` (out, r), as numpy arrays (from
    torch: ``.detach().float().cpu().numpy()``); ``scaling`` is its ``scaling`` (α/r, or α/√r for rsLoRA).
    With ``B = Q_B R_B`` and ``Aᵀ = Q_A R_A`` (reduced QR), ``ΔW = scaling · Q_B (R_B R_Aᵀ) Q_Aᵀ`` and the
    orthonormal factors keep singular values, so only the small r × r core is decomposed: O((in + out)·r²)
    instead of an SVD of the out × in matrix. Returns min(r, in, out) values.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or b.shape[1] != a.shape[0]:
        raise PipelineError(f"statistics: delta_singular_values needs A (r, in) and B (out, r), got A "
                            f"{a.shape} and B {b.shape}")
    r_b = np.linalg.qr(b, mode="r")  # (min(out, r), r)
    r_a = np.linalg.qr(a.T, mode="r")  # (min(in, r), r)
    return abs(scaling) * np.linalg.svd(r_b @ r_a.T, compute_uv=False)


def effective_rank(singular_values: np.ndarray, energy: float = 0.9) -> int:
    """The fewest largest singular values whose squares hold ≥ ``energy`` of the total squared sum.

    0 for an all-zero update (an adapter whose B never left its zero init). Directions holding less than
    1e-12 of the energy never count (a slack on the fraction), so round-off singular values of an exactly
    rank-k update do not add spurious directions at ``energy=1``.
    """
    if not 0.0 < energy <= 1.0:
        raise PipelineError(f"statistics: energy must lie in (0, 1], got {energy!r}")
    cum = np.cumsum(np.sort(np.asarray(singular_values, dtype=np.float64))[::-1] ** 2)
    if cum.size == 0 or cum[-1] == 0.0:
        return 0
    fraction = cum / cum[-1]  # the last entry is exactly 1
    return int(np.searchsorted(fraction, energy - 1e-12) + 1)


def _right_singular_vectors(a: np.ndarray, name: str) -> np.ndarray:
    """Rows = right-singular directions of ``a`` (r, in), largest singular value first."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2:
        raise PipelineError(f"statistics: {name} must be a 2-D (r, in) matrix, got shape {a.shape}")
    return np.linalg.svd(a, full_matrices=False)[2]  # (min(r, in), in)


def subspace_similarity_grid(a_small: np.ndarray, a_large: np.ndarray) -> np.ndarray:
    """``grid[i-1, j-1] = φ(A_small, A_large, i, j)`` for every i ≤ r_small, j ≤ r_large.

    ``φ = ‖U_iᵀ U_j‖_F² / min(i, j)`` with ``U_i`` the top-i right-singular vectors of A_small (the LoRA
    paper's Figure 3 measure, §7.2): 1 when one subspace contains the other, 0 when orthogonal. Directions
    with zero singular value are arbitrary, so read only i, j up to each matrix's rank.
    """
    v_small, v_large = _right_singular_vectors(a_small, "A_small"), _right_singular_vectors(a_large, "A_large")
    if v_small.shape[1] != v_large.shape[1]:
        raise PipelineError(f"statistics: A_small and A_large must share the input size, got "
                            f"{v_small.shape[1]} and {v_large.shape[1]}; compare the same layer")
    overlap = (v_small @ v_large.T) ** 2  # (r1, r2): squared cosines between directions
    cum = overlap.cumsum(axis=0).cumsum(axis=1)  # cum[i-1, j-1] = ‖U_iᵀ U_j‖_F²
    i, j = np.arange(1, cum.shape[0] + 1), np.arange(1, cum.shape[1] + 1)
    return np.clip(cum / np.minimum.outer(i, j), 0.0, 1.0)  # clip: round-off may exceed 1 by ~1e-15


def subspace_similarity(a_small: np.ndarray, a_large: np.ndarray, i: int, j: int) -> float:
    """φ(A_small, A_large, i, j) of :func:`subspace_similarity_grid`, in [0, 1].

    Raises:
        PipelineError: i or j outside 1..(rows of its matrix).
    """
    grid = subspace_similarity_grid(a_small, a_large)
    if not (1 <= i <= grid.shape[0] and 1 <= j <= grid.shape[1]):
        raise PipelineError(f"statistics: subspace_similarity needs 1 ≤ i ≤ {grid.shape[0]} and "
                            f"1 ≤ j ≤ {grid.shape[1]}, got i={i}, j={j}")
    return float(grid[i - 1, j - 1])
