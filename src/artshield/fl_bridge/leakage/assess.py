"""How much a reconstruction reveals: images matched to the originals, PSNR / SSIM / LPIPS, label accuracy.

A reconstruction's images come in no particular order (a batch's gradient is a sum over its images), so they
are first matched to the originals by the assignment that minimises the total per-pair MSE (Hungarian
algorithm, ``scipy.optimize.linear_sum_assignment``); breaching matches by LPIPS, which needs downloaded
weights. Every score is then taken on matched pairs, and is therefore invariant to the reconstruction's order.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from ... import metrics
from ...errors import InvalidArgumentError
from .inversion import Reconstruction


def _images(value: Any, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.dim() != 4 or not value.is_floating_point():
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise InvalidArgumentError(f"`{name}` must be floating-point images (B, C, H, W), but is {shape}.")
    return value.detach().float().cpu()


def _labels(value: Any, count: int, name: str) -> torch.Tensor:
    value = torch.as_tensor(value).detach().cpu()
    if value.dim() != 1 or value.is_floating_point() or value.shape[0] != count:
        raise InvalidArgumentError(f"`{name}` must be {count} integer labels, but has shape {tuple(value.shape)}.")
    return value.to(torch.int64)


def _mean(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite and len(finite) == len(values) else None


def count_accuracy(true_labels: torch.Tensor, recovered: torch.Tensor, num_classes: int | None = None) -> float:
    """The share of the batch's labels recovered as a multiset: ``sum_c min(n_c, n̂_c) / B``."""
    size = max(int(torch.cat([true_labels, recovered]).max()) + 1 if len(true_labels) + len(recovered) else 0,
               num_classes or 0)
    true_counts = torch.bincount(true_labels, minlength=size)
    found = torch.bincount(recovered, minlength=size)
    return float(torch.minimum(true_counts, found).sum()) / max(len(true_labels), 1)


def assess(original_images: torch.Tensor, original_labels: torch.Tensor, reconstruction: Reconstruction,
           recovered_labels: torch.Tensor | None = None, *, lpips: bool = True) -> dict[str, Any]:
    """Score `reconstruction` against the client's true batch.

    Returns a JSON-ready dict:
        ``matched_order``: for original ``i``, the index of the reconstruction matched to it (grids use it);
        ``mse``, ``psnr`` (capped at 100 dB), ``ssim``, ``lpips``: per matched pair, and ``*_mean``;
            SSIM is None for images under 11x11 pixels and LPIPS None without its weights (``notes`` says why);
        ``label_accuracy``: the share of originals whose matched reconstruction carries their label;
        ``count_accuracy``: the share of labels recovered as a multiset (``recovered_labels`` when given, e.g.
            a label-recovery method's output, else the reconstruction's labels), ``counts_exact``, ``true_counts``
            and ``recovered_counts`` per class;
        ``notes``: why a metric is missing.
    """
    from scipy.optimize import linear_sum_assignment

    if not isinstance(reconstruction, Reconstruction):
        raise InvalidArgumentError(f"`reconstruction` must be a Reconstruction, but is {type(reconstruction).__name__}.")
    originals = _images(original_images, "original_images")
    guesses = _images(reconstruction.images, "reconstruction.images")
    if originals.shape != guesses.shape:
        raise InvalidArgumentError(f"the reconstruction has shape {tuple(guesses.shape)}, the originals "
                                   f"{tuple(originals.shape)}.")
    batch = originals.shape[0]
    true_labels = _labels(original_labels, batch, "original_labels")
    guessed_labels = _labels(reconstruction.labels, batch, "reconstruction.labels")
    if recovered_labels is not None:
        recovered_labels = _labels(recovered_labels, batch, "recovered_labels")

    # Hungarian matching on per-pair MSE.
    cost = (originals.flatten(1)[:, None, :] - guesses.flatten(1)[None, :, :]).pow(2).mean(dim=2)
    rows, cols = linear_sum_assignment(cost.double().numpy())
    order = torch.as_tensor(cols[np.argsort(rows)], dtype=torch.int64)
    matched = guesses[order]
    notes: dict[str, str] = {}

    mse = metrics.mse(originals, matched)
    psnr = metrics.finite_psnr(originals, matched)
    try:
        ssim: list[float | None] = [float(v) for v in metrics.ssim(originals, matched)]
    except InvalidArgumentError as exc:
        ssim = [None] * batch
        notes["ssim"] = str(exc)
    lpips_values: list[float | None] = [None] * batch
    if lpips:
        reason = metrics.lpips_unavailable_reason("alex")
        if reason is not None:
            notes["lpips"] = reason
        else:
            try:
                with torch.no_grad():
                    distance = metrics.lpips_distance(originals, matched)
                if distance is None:
                    notes["lpips"] = "LPIPS returned nothing (its model could not be built)."
                else:
                    lpips_values = [float(v) for v in distance]
            except Exception as exc:  # LPIPS's AlexNet cannot take very small images, among other things
                notes["lpips"] = f"LPIPS failed on these images ({type(exc).__name__}: {exc})."
    else:
        notes["lpips"] = "LPIPS not requested."

    num_classes = int(max(int(true_labels.max()), int(guessed_labels.max()),
                          int(recovered_labels.max()) if recovered_labels is not None else 0) + 1)
    multiset = recovered_labels if recovered_labels is not None else guessed_labels
    true_counts = torch.bincount(true_labels, minlength=num_classes)
    found_counts = torch.bincount(multiset, minlength=num_classes)
    return {
        "batch_size": batch,
        "matched_order": order.tolist(),
        "mse": [float(v) for v in mse],
        "psnr": [float(v) for v in psnr],
        "ssim": ssim,
        "lpips": lpips_values,
        "mse_mean": float(mse.mean()),
        "psnr_mean": float(psnr.mean()),
        "ssim_mean": _mean(ssim),
        "lpips_mean": _mean(lpips_values),
        "label_accuracy": float((guessed_labels[order] == true_labels).float().mean()),
        "count_accuracy": count_accuracy(true_labels, multiset, num_classes),
        "counts_exact": bool(torch.equal(true_counts, found_counts)),
        "true_counts": true_counts.tolist(),
        "recovered_counts": found_counts.tolist(),
        "labels_from": "recovered_labels" if recovered_labels is not None else "reconstruction",
        "notes": notes,
    }


__all__ = ["assess", "count_accuracy"]
