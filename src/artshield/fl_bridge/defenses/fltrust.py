"""FLTrust (Cao et al., NDSS 2021): trust bootstrapped from the server's own small clean dataset.

Each round the server trains the global model on its root data like a client would (``root.update``) and
gets ``g_0``. A client's trust score is ``ReLU(cos(g_i, g_0))``; every ``g_i`` is rescaled to ``‖g_0‖`` (so a
client cannot win by sheer magnitude) and the aggregate is the trust-weighted mean of the rescaled updates.
A client with trust 0 contributes nothing: those with trust > 0 count as accepted. When nobody has positive
trust the paper's formula is 0/0; we keep the global model (zero delta) rather than FLPoison's fallback to a
plain mean, which would hand the round to the attackers exactly when they dominate.
"""

from __future__ import annotations

import torch

from ...errors import InvalidArgumentError
from .base import Aggregate, AggregationRule, RootAccess, RoundUpdates
from .robust import combine, round_matrix


class FLTrust(AggregationRule):
    """FLTrust: trust = ReLU(cos(g_i, g_0)), each update rescaled to ``‖g_0‖``, trust-weighted mean."""

    name = "fltrust"
    selects = True

    def __init__(self, root: RootAccess):
        if root is None or not callable(getattr(root, "update", None)):
            raise InvalidArgumentError("defense 'fltrust' needs root (the server's root dataset with an update() method)")
        self.root = root

    def config(self) -> dict:
        return {}

    def aggregate(self, updates: RoundUpdates) -> Aggregate:
        x, _ = round_matrix(self.name, updates)
        g0 = torch.as_tensor(self.root.update(updates.global_vector)).detach().to(x.device, x.dtype).reshape(-1)
        if g0.numel() != x.shape[1]:
            raise InvalidArgumentError(f"defense 'fltrust': the root update has {g0.numel()} values, the clients' {x.shape[1]}")
        root_norm = torch.linalg.vector_norm(g0).double()
        norms = torch.linalg.vector_norm(x, dim=1).double()
        dots = (x @ g0).double()
        denominator = norms * root_norm
        cosine = torch.where(denominator > 0, dots / denominator.clamp_min(1e-300), torch.zeros_like(dots))
        trust = cosine.clamp(0, 1)
        accepted = (trust > 0).cpu()
        total = trust.sum()
        if not total > 0:
            return Aggregate(torch.zeros_like(x[0]), accepted, {"root_norm": float(root_norm), "mean_trust": 0.0})
        coefficients = trust / total * root_norm / norms.clamp_min(1e-300)
        coefficients = torch.where(trust > 0, coefficients, torch.zeros_like(coefficients))
        return Aggregate(combine(x, coefficients), accepted,
                         {"root_norm": float(root_norm), "mean_trust": float(trust.mean())})
