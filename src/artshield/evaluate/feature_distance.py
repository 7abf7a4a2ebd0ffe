"""FID-like distances between two sets of images in a feature space available offline.

FID compares Inception-v3 features of generated and reference images; Inception's weights cannot be
downloaded here, and with the 8-50 images a mimicry evaluation produces, FID is badly biased anyway
(Bińkowski et al., "Demystifying MMD GANs", ICLR 2018). So the harness reports, in the demo style metric's
handcrafted colour-and-texture feature space (:func:`artshield.models.demo.style.image_features`, defined for
any image of at least 16 px, standardised by fixed statistics so distances are comparable across runs):

* ``kid``: the kernel inception distance's estimator — the unbiased MMD² with the cubic polynomial kernel
  k(x, y) = (xᵀy / d + 1)³ — which has no small-sample bias, so it is the one to compare across set sizes;
* ``fd``: the Fréchet distance ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁^½ Σ₂ Σ₁^½)^½), FID's formula in this space.

Lower means the generated set's colour/texture statistics are closer to the reference (the artist's clean
images): for a mimic, lower is better. These features capture palette and stroke statistics, not content or
perceptual quality: on real paintings they are a coarse style proxy, not a substitute for FID on Inception
or CLIP features (use ``clip_score`` where CLIP weights are present).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InvalidArgumentError
from ..models.demo.style import image_features


def features(images: torch.Tensor | list[torch.Tensor], mean: torch.Tensor | None = None,
             std: torch.Tensor | None = None, batch_size: int = 32) -> np.ndarray:
    """Standardised handcrafted features, (N, F) float64. `images` may be a list of differently sized images."""
    rows = []
    items = list(images) if isinstance(images, list) else [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    with torch.no_grad():
        for item in items:
            batch = item.unsqueeze(0) if item.dim() == 3 else item
            rows.append(image_features(batch.float().cpu()).double())
    out = torch.cat(rows)
    if mean is not None and std is not None:
        out = (out - mean.double().cpu()) / std.double().cpu()
    return out.numpy()


def kid(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with the kernel (xᵀy / d + 1)³ between feature sets (N, d) and (M, d); N, M ≥ 2."""
    x, y = _check(x, "x"), _check(y, "y")
    d = x.shape[1]
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    n, m = x.shape[0], y.shape[0]
    return float(
        (kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2.0 * kxy.mean()
    )


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """‖μx − μy‖² + Tr(Σx + Σy − 2 (Σx^½ Σy Σx^½)^½) between feature sets (N, d) and (M, d); N, M ≥ 2.

    Computed from the centred data rather than the d × d covariances: with Xc, Yc the centred sets,
    Tr((Σx^½ Σy Σx^½)^½) is the sum of the singular values of Xc Ycᵀ / √((N−1)(M−1)) (the eigenvalues of
    Σx Σy are those of Xc Ycᵀ Yc Xcᵀ up to that factor). Exact, and an N × M SVD instead of d × d
    eigendecompositions, which matters inside a bootstrap.
    """
    x, y = _check(x, "x"), _check(y, "y")
    xc, yc = x - x.mean(0), y - y.mean(0)
    n, m = x.shape[0], y.shape[0]
    cross = np.linalg.svd(xc @ yc.T, compute_uv=False).sum() / np.sqrt((n - 1) * (m - 1))
    value = float(((x.mean(0) - y.mean(0)) ** 2).sum() + (xc**2).sum() / (n - 1) + (yc**2).sum() / (m - 1) - 2.0 * cross)
    return max(value, 0.0)


def _check(array: np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(array, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 2:
        raise InvalidArgumentError(f"`{name}` must be a (N, d) feature set with N >= 2, but has shape {array.shape}.")
    if not np.all(np.isfinite(array)):
        raise InvalidArgumentError(f"`{name}` holds NaN or infinite features.")
    return array


__all__ = ["features", "frechet_distance", "kid"]
