"""SkyMask (Yan et al., ECCV 2024): masks over the clients' updates, trained on the server's root data.

What the reference (``KoalaYan/SkyMask``: ``main.py``, ``mytorch.py``, ``aggregation.py::skymask``,
``classify.py::GMM2``) does each round, and what this module does with it:

1. The server trains the global model on its small root set like a client would; that update ``g_0`` joins
   the ``n`` client updates as a trusted anchor (the reference appends it last; so do we).
2. Every update gets a real-valued mask of the model's size (one per client per parameter). The reference
   builds a "mask net" whose layers (``mylinear``/``myconv2d``/``mybatch_norm``) use the weights
   ``w = Σ_i σ(m_i)⊙w_i / Σ_i σ(m_i)`` over the client models ``w_i = global + Δ_i``. Since
   ``Σ_i σ(m_i)⊙(global + Δ_i) / Σ_i σ(m_i) = global + Σ_i σ(m_i)⊙Δ_i / Σ_i σ(m_i)`` (the global term's weights
   sum to one coordinate by coordinate), we form the masked model straight from the deltas, on the whole
   parameter vector at once: masks are one ``(n+1, d)`` tensor and the masked model is one vector that
   :meth:`RootAccess.loss` evaluates differentiably. Masks start at 1 (σ(1) ≈ 0.73), as the reference's
   ``torch.ones`` do.
3. The masks (only the masks; updates and global model are frozen) are trained by SGD on the root loss,
   with every gradient entry clamped to ``±clip`` before the step (the reference's ``utils.clip_gradient``
   is an element-wise clamp), for at most ``epochs`` steps (20), stopping early when the loss improved by
   less than ``tol`` (1e-2) over the last ``check_every`` (10) steps — the reference's rule.
4. Masks are binarised at ``threshold`` (σ(m) > 0.5), reduced to 2-D by PCA and split by a 2-component
   Gaussian mixture. The cluster holding the server's own mask is benign; only benign clients' deltas are
   averaged (weighted by ``num_examples``; the reference uses a plain mean and a server learning rate).

**Step size.** The reference uses ``lr=1e7`` with ``clip=1e-7`` for its CNN (1e8 for ResNet-20). Their
product is what matters: the mask gradients there are of order 1e-8..1e-6 (they carry a factor
``Δ/Σσ``: small client updates divided by ~70 summed masks), so nearly every entry hits the clamp and each
step moves each mask logit by ``lr·clip = 1`` in the direction that lowers the loss — a sign step of one
logit. That regime is what makes the masks binary-separable after a few steps; a fixed ``lr`` is tied to
one model's loss scale, number of clients and update size. The default here, ``mask_lr="auto"``, keeps the
regime and drops the scale: every step moves mask entries by ``step · clamp(g / s, -1, 1)`` where ``s`` is
the ``clip_quantile`` (0.5) quantile of ``|g|`` at the first step (so at least half the entries take a full
step of ``step`` = 1 logit, as in the reference, and the smallest gradients take proportionally smaller
ones). Passing a number for ``mask_lr`` (and ``clip``) reproduces the reference literally.

**Principal components.** PCA of the ``(n+1) × d`` binary masks is computed from the ``(n+1) × (n+1)``
Gram matrix of the centred masks (its top eigenvectors scaled by the root eigenvalues are exactly the
PCA scores ``sklearn.decomposition.PCA(2).fit_transform`` returns, up to the sign of each axis, which a
Gaussian mixture ignores); at d = 1M that is one matrix product instead of an SVD of a 1M-wide matrix.
The mixture is scikit-learn's ``GaussianMixture(2, random_state=seed)``.

**Edge cases** (documented choices; the reference has none of them):
- fewer than 3 clients, or fewer than 2 distinct points in the PCA plane (all masks identical, or every
  client identical to every other), or a mixture that cannot be fitted: no clustering; the clients whose
  mask is closest to the server's (smallest Hamming distance, ties kept) are accepted. With all masks
  identical that keeps everyone, which is the only honest answer when the masks carry no signal.
- the masked model's root loss is not finite at the start (an update so large that the mixture overflows):
  clients whose own model ``global + Δ_i`` has a non-finite root loss are dropped and the masks retrained
  on the rest (``dropped_nonfinite`` in the metrics); if it is still not finite, nobody is accepted.
- the server's cluster holds no client (every client looks malicious, e.g. an all-malicious round): the
  round's delta is the server's own update ``g_0`` (``empty="server"``, the default) or zero
  (``empty="zero"``: keep the old model).

**What to expect** (measured on digits, 20 clients, Dirichlet 0.5, 8 rounds, 2 seeds, MLP and small CNN):
large or incoherent attacks (sign flip ×10, Gaussian) are caught at 20 % and 50 % (TPR 0.92-1, FPR 0);
LIE at 20-80 % on the CNN TPR 1, FPR 0; IPM at 20 % is only half caught (TPR 0.44-0.69, FPR 0.27-0.38);
at 80 % LIE/IPM/Gaussian are caught (TPR 1) but sign flip ×10 only at TPR 0.86-0.95, and one missed ×10
update ruins the round. Like the reference, the two-component mixture always splits: **with no attack at
all it drops about a third of the honest clients** (FPR 0.34-0.47). ``bic_check=True`` (ours, off by
default) keeps everyone when one Gaussian explains the PCA points better than two (by BIC); it lowered the
no-attack FPR only a little there (0.43 → 0.36) and did not change the attacked cases.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch

from ...errors import InvalidArgumentError
from .base import Aggregate, AggregationRule, RootAccess, RoundUpdates


def masked_vector(masks: torch.Tensor, deltas: torch.Tensor, global_vector: torch.Tensor) -> torch.Tensor:
    """The masked model ``global + Σ_i σ(m_i)⊙Δ_i / Σ_i σ(m_i)`` (= the reference's Σσ(m_i)⊙w_i / Σσ(m_i))."""
    weights = torch.sigmoid(masks)
    return global_vector + (weights * deltas).sum(0) / weights.sum(0)


def pca_2d(points: torch.Tensor) -> np.ndarray:
    """PCA scores on the two leading components of the rows of `points` (k, d), via the k×k Gram matrix."""
    x = points.to(torch.float64)
    x = x - x.mean(0, keepdim=True)
    gram = x @ x.T
    values, vectors = torch.linalg.eigh(gram)  # ascending
    values = values.flip(0)[:2].clamp_min(0.0)
    vectors = vectors.flip(1)[:, :2]
    scores = vectors * values.sqrt()
    if scores.shape[1] < 2:  # one point only
        scores = torch.cat([scores, torch.zeros(scores.shape[0], 2 - scores.shape[1], dtype=scores.dtype)], 1)
    return scores.cpu().numpy()


def _quantile_abs(values: torch.Tensor, q: float) -> float:
    """The q-quantile of the non-zero |values| (at most 2**24 evenly spaced of them); 1.0 when all are zero.

    Zeros are left out: coordinates that no client changed (inputs that are always zero, dead units) have
    exactly zero mask gradient and would otherwise drag the scale to nothing.
    """
    flat = values.detach().abs().flatten()
    flat = flat[flat > 0]
    if flat.numel() == 0:
        return 1.0
    if flat.numel() > 1 << 24:
        flat = flat[:: flat.numel() // (1 << 24) + 1]
    return float(torch.quantile(flat.to(torch.float64), q))


class SkyMask(AggregationRule):
    """Train per-client masks on the root data, cluster the binarised masks, keep the server's cluster."""

    name = "skymask"
    selects = True

    def __init__(
        self,
        root: RootAccess,
        *,
        mask_lr: float | str = "auto",
        clip: float | None = None,
        step: float = 1.0,
        clip_quantile: float = 0.5,
        epochs: int = 20,
        threshold: float = 0.5,
        mask_init: float = 1.0,
        tol: float = 1e-2,
        check_every: int = 10,
        empty: str = "server",
        bic_check: bool = False,
        seed: int = 0,
    ):
        if root is None:
            raise InvalidArgumentError("skymask needs the server's root data (root=...)")
        if isinstance(mask_lr, str):
            if mask_lr != "auto":
                raise InvalidArgumentError(f"skymask mask_lr must be a positive number or 'auto', got {mask_lr!r}")
        elif not (float(mask_lr) > 0 and np.isfinite(float(mask_lr))):
            raise InvalidArgumentError(f"skymask mask_lr must be a positive number or 'auto', got {mask_lr!r}")
        if clip is not None and not (float(clip) > 0):
            raise InvalidArgumentError(f"skymask clip must be positive, got {clip!r}")
        if not (float(step) > 0):
            raise InvalidArgumentError(f"skymask step must be positive, got {step!r}")
        if not (0.0 < float(clip_quantile) <= 1.0):
            raise InvalidArgumentError(f"skymask clip_quantile must be in (0, 1], got {clip_quantile!r}")
        if int(epochs) < 1:
            raise InvalidArgumentError(f"skymask epochs must be at least 1, got {epochs!r}")
        if not (0.0 < float(threshold) < 1.0):
            raise InvalidArgumentError(f"skymask threshold must be in (0, 1), got {threshold!r}")
        if int(check_every) < 1:
            raise InvalidArgumentError(f"skymask check_every must be at least 1, got {check_every!r}")
        if empty not in ("server", "zero"):
            raise InvalidArgumentError(f"skymask empty must be 'server' or 'zero', got {empty!r}")
        self._root = root
        self.mask_lr = mask_lr if isinstance(mask_lr, str) else float(mask_lr)
        self.clip = None if clip is None else float(clip)
        self.step = float(step)
        self.clip_quantile = float(clip_quantile)
        self.epochs = int(epochs)
        self.threshold = float(threshold)
        self.mask_init = float(mask_init)
        self.tol = float(tol)
        self.check_every = int(check_every)
        self.empty = empty
        self.bic_check = bool(bic_check)
        self.seed = int(seed)

    def config(self) -> dict:
        out = super().config()
        if self.clip is None:
            out["clip"] = "auto" if self.mask_lr == "auto" else "none"
        return out

    # -- the three stages, public so that they can be tested and studied one by one --------------------

    def train_masks(self, deltas: torch.Tensor, global_vector: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Masks (k, d) trained on the root loss of the masked model; `deltas` (k, d) end with the server's."""
        k, d = deltas.shape
        deltas = deltas.detach().to(torch.float32)
        global_vector = global_vector.detach().to(deltas.device, torch.float32)
        masks = torch.full((k, d), self.mask_init, dtype=torch.float32, device=deltas.device, requires_grad=True)
        lr, clip = self.mask_lr, self.clip
        losses: list[float] = []
        last_check = float("inf")
        steps = 0
        for epoch in range(self.epochs):
            loss = self._root.loss(masked_vector(masks, deltas, global_vector))
            if not torch.isfinite(loss):
                break
            (grad,) = torch.autograd.grad(loss, masks)
            value = float(loss.detach())
            losses.append(value)
            if epoch % self.check_every == 0:  # the reference's early stop: checked before the step
                if last_check - value < self.tol:
                    break
                last_check = value
            if lr == "auto":
                if clip is None:  # the gradient scale, fixed at the first step
                    clip = _quantile_abs(grad, self.clip_quantile)
                step = self.step * torch.clamp(grad / clip, -1.0, 1.0)
            else:
                step = lr * (grad.clamp(-clip, clip) if clip is not None else grad)
            with torch.no_grad():
                masks -= step
            steps += 1
        with torch.no_grad():
            final = float(self._root.loss(masked_vector(masks, deltas, global_vector)))
        info = {"mask_steps": float(steps), "mask_loss_start": losses[0] if losses else float("nan"),
                "mask_loss_end": final}
        return masks.detach(), info

    def binarise(self, masks: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(masks) > self.threshold

    def classify(self, binary: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Benign flags (k,) for the binary masks (k, d) whose last row is the server's, and how they were found."""
        k = binary.shape[0]
        n = k - 1
        binary = binary.cpu()
        x = binary.to(torch.float32)
        hamming = (x[:-1] != x[-1]).sum(1)
        closest = hamming == hamming.min() if n else torch.zeros(0, dtype=torch.bool)
        fallback = torch.cat([closest, torch.ones(1, dtype=torch.bool)])
        if n < 3:
            return fallback, {"fallback": 1.0}
        if torch.unique(binary[:-1], dim=0).shape[0] < 2:  # every client's mask is the same: nothing to split
            return fallback, {"fallback": 1.0}
        scores = pca_2d(x)
        from sklearn.mixture import GaussianMixture

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mixture = GaussianMixture(n_components=2, random_state=self.seed).fit(scores)
                labels = mixture.predict(scores)
                if self.bic_check:
                    single = GaussianMixture(n_components=1, random_state=self.seed).fit(scores)
                    if single.bic(scores) <= mixture.bic(scores):
                        return torch.ones(k, dtype=torch.bool), {"fallback": 0.0, "single_cluster": 1.0}
        except (ValueError, np.linalg.LinAlgError):
            return fallback, {"fallback": 1.0}
        benign = torch.as_tensor(labels == labels[-1])
        return benign, {"fallback": 0.0, "single_cluster": 0.0}

    def _finite_clients(self, deltas: torch.Tensor, global_vector: torch.Tensor) -> torch.Tensor:
        global_vector = global_vector.detach().to(deltas.device, torch.float32)
        with torch.no_grad():
            return torch.tensor([bool(torch.isfinite(self._root.loss(global_vector + delta))) for delta in deltas])

    # -- the rule -------------------------------------------------------------------------------------

    def aggregate(self, updates: RoundUpdates) -> Aggregate:
        deltas = updates.deltas.detach().to(torch.float32)
        n, d = deltas.shape
        start = time.perf_counter()
        server = self._root.update(updates.global_vector.detach()).detach().to(deltas.device, torch.float32).reshape(-1)
        if server.numel() != d:
            raise InvalidArgumentError(f"the root update has {server.numel()} entries, the model has {d}")
        server_seconds = time.perf_counter() - start
        start = time.perf_counter()
        usable = torch.ones(n, dtype=torch.bool)
        masks, info = self.train_masks(torch.cat([deltas, server[None]], 0), updates.global_vector)
        if not np.isfinite(info["mask_loss_start"]):
            # the masked model itself is broken (an update so large that the mixture overflows): the masks
            # learnt nothing, so first drop every client whose own model has a non-finite root loss
            usable = self._finite_clients(deltas, updates.global_vector)
            everyone = torch.cat([deltas[usable.to(deltas.device)], server[None]], 0)
            masks, info = self.train_masks(everyone, updates.global_vector)
        mask_seconds = time.perf_counter() - start
        start = time.perf_counter()
        binary = self.binarise(masks)
        if np.isfinite(info["mask_loss_start"]):
            benign, how = self.classify(binary)
        else:  # still broken: keep nobody rather than everyone
            benign, how = torch.cat([torch.zeros(len(binary) - 1, dtype=torch.bool), torch.ones(1, dtype=torch.bool)]), {}
        cluster_seconds = time.perf_counter() - start
        accepted = torch.zeros(n, dtype=torch.bool)
        accepted[usable] = benign[:-1]
        binary_clients = torch.zeros(n, d, dtype=torch.bool)
        binary_clients[usable] = binary[:-1].cpu()
        kept = int(accepted.sum())
        if kept:
            chosen = accepted.to(deltas.device)
            weights = updates.num_examples.to(deltas.device, torch.float32)[chosen]
            weights = weights / weights.sum() if float(weights.sum()) > 0 else torch.full_like(weights, 1.0 / kept)
            delta = (weights[:, None] * deltas[chosen]).sum(0)
        else:
            delta = server.clone() if self.empty == "server" else torch.zeros_like(server)
        metrics = {
            "seconds_server_update": server_seconds,
            "seconds_masks": mask_seconds,
            "seconds_cluster": cluster_seconds,
            "cluster_benign": float(kept),
            "cluster_malicious": float(n - kept),
            "server_only": float(kept == 0),
            "mask_ones_benign": float(binary_clients[accepted].float().mean()) if kept else float("nan"),
            "mask_ones_server": float(binary[-1].float().mean()),
            "dropped_nonfinite": float(n - int(usable.sum())),
            "fallback": 0.0,
            "single_cluster": 0.0,
            **how,
            **info,
        }
        return Aggregate(delta=delta.to(updates.deltas.dtype), accepted=accepted, metrics=metrics)
