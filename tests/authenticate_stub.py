"""TEMPORARY stand-in for ``artshield.authenticate.pair``, ``.baselines`` and ``.calibration`` (written in
parallel by another branch). Installed into ``sys.modules`` only when the real module is missing; the lead
deletes this file after merging both branches. It follows the agreed interface, minimally."""

from __future__ import annotations

import contextlib
import importlib.util
import math
import sys
import types
from dataclasses import asdict, dataclass

import numpy as np
import torch


# ---------------------------------------------------------------------------------------------- pair
class ModelPair:
    def __init__(self, base, suspect, prompt: str = "", is_lora: bool = False):
        self.base, self._suspect, self.prompt, self.is_lora = base, suspect, prompt, is_lora

    @classmethod
    def load(cls, base, *, suspect=None, lora=None, prompt="", device=None, dtype=None):
        from artshield.models import DiffusionModel, load

        base_model = base if isinstance(base, DiffusionModel) else load(str(base), device=device, dtype=dtype)
        if lora is not None:
            return cls(base_model, base_model.with_lora(lora), prompt, True)
        suspect_model = suspect if isinstance(suspect, DiffusionModel) else load(str(suspect), device=device, dtype=dtype)
        return cls(base_model, suspect_model, prompt, False)

    @contextlib.contextmanager
    def using(self, which: str):
        yield self.base if which == "base" else self._suspect

    def encode(self, images):
        return self.base.encode(images, mode="mean")

    def decode(self, latents):
        return self.base.decode(latents)

    def losses(self, latents, timesteps, noise):
        out = []
        for model in (self.base, self._suspect):
            embeds = model.embed_prompt(self.prompt, batch_size=latents.shape[0])
            out.append(model.training_loss(latents, embeds, timesteps=timesteps, noise=noise))
        return out[0], out[1]


# ---------------------------------------------------------------------------------------------- baselines
class _Loss:
    name = "loss"

    def score(self, pair, images, generator=None):
        generator = generator or torch.Generator().manual_seed(0)
        with torch.no_grad():
            latents = pair.encode(images)
            t = torch.randint(100, 900, (latents.shape[0],), generator=generator)
            noise = torch.randn(latents.shape, generator=generator)
            pre, ft = pair.losses(latents, t, noise)
        return self._combine(pre, ft).cpu().numpy()

    def _combine(self, pre, ft):
        return -ft


class LossAttack(_Loss):
    name = "loss"


class CalibratedLoss(_Loss):
    name = "loss-diff"

    def _combine(self, pre, ft):
        return pre - ft


class SecMI(CalibratedLoss):
    name = "secmi"


class PIA(CalibratedLoss):
    name = "pia"


BASELINES = {"loss": LossAttack, "loss-diff": CalibratedLoss, "secmi": SecMI, "pia": PIA}


# ---------------------------------------------------------------------------------------------- calibration
@dataclass
class MembershipMetrics:
    auc: float
    auc_ci: tuple
    tpr_at_1pct: float
    tpr_at_1pct_ci: tuple
    tpr_at_01pct: float
    tpr_at_01pct_ci: tuple
    balanced_accuracy: float

    def to_dict(self):
        return asdict(self)


def membership_metrics(member_scores, nonmember_scores, *, bootstrap=1000, alpha=0.05, seed=0):
    from artshield.stats import roc_auc

    m, n = np.asarray(member_scores, float), np.asarray(nonmember_scores, float)
    auc = roc_auc(m, n)
    thr = fit_threshold(n, 0.01)
    tpr = float((m > thr).mean())
    return MembershipMetrics(auc, (auc, auc), tpr, (tpr, tpr), tpr, (tpr, tpr), 0.5 * (tpr + float((n <= thr).mean())))


def fit_threshold(nonmember_scores, fpr):
    return float(np.quantile(np.asarray(nonmember_scores, float), 1 - fpr))


@dataclass
class Verdict:
    learned: bool
    p_value: float
    statistic: float
    alpha: float
    method: str
    explanation: str

    def to_dict(self):
        return asdict(self)


def model_verdict(candidate_scores, reference_scores, *, alpha=0.01, permutations=10000, seed=0):
    c, r = np.asarray(candidate_scores, float), np.asarray(reference_scores, float)
    stat = float(c.mean() - r.mean())
    rng = np.random.default_rng(seed)
    both = np.concatenate([c, r])
    hits = 0
    for _ in range(min(permutations, 2000)):
        rng.shuffle(both)
        hits += both[: len(c)].mean() - both[len(c):].mean() >= stat - 1e-12
    p = (hits + 1) / (min(permutations, 2000) + 1)
    learned = bool(p <= alpha) and not math.isnan(p)
    return Verdict(learned, p, stat, alpha, "permutation (stub)", f"stub verdict p={p:.3g}")


# ---------------------------------------------------------------------------------------------- install
def install() -> None:
    """Register each stand-in module whose real module is missing."""
    import artshield.authenticate as package

    for name, attrs in {
        "pair": {"ModelPair": ModelPair},
        "baselines": {"BASELINES": BASELINES, "LossAttack": LossAttack, "CalibratedLoss": CalibratedLoss,
                      "SecMI": SecMI, "PIA": PIA},
        "calibration": {"membership_metrics": membership_metrics, "fit_threshold": fit_threshold,
                        "model_verdict": model_verdict, "MembershipMetrics": MembershipMetrics, "Verdict": Verdict},
    }.items():  # fmt: skip
        full = f"artshield.authenticate.{name}"
        if full in sys.modules or importlib.util.find_spec(full) is not None:
            continue
        module = types.ModuleType(full)
        module.__dict__.update(attrs)
        sys.modules[full] = module
        setattr(package, name, module)


install()
