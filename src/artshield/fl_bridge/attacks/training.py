"""Training-time attacks: what a malicious client trains on, how its local model is constrained, what it sends.

Each class fills the hooks of :class:`~.base.TrainingAttack`; ``fl_bridge.training.train_locally`` calls
``poison_batch`` on every batch and ``constrain`` after every local step, the client handler calls
``finalize`` on the delta, and the experiment measures the attack success rate (ASR) on ``backdoor``'s inputs.

- :class:`LabelFlip`: source → target (targeted), every label → target, or every label y → C − 1 − y.
- :class:`Scaling`: model replacement (Bagdasaryan et al., AISTATS 2020): the delta times `scale`, optionally
  trained on a pixel-trigger backdoor.
- :class:`DBA`: distributed backdoor (Xie et al., ICLR 2020): a global pixel pattern split into parts; malicious
  client i stamps part i % parts, the test stamps the whole pattern.
- :class:`EdgeCasePGD`: edge-case backdoor with PGD (Wang et al., NeurIPS 2020): edge-case samples labelled as
  the target, the local model projected onto an L2 ball around the global model after every step, on the
  perturbation engine's :func:`~artshield.engine.budget.project` applied to the flattened parameter vector.
- :class:`Neurotoxin` (Zhang et al., ICML 2022): the backdoor trained only on coordinates the benign clients
  rarely update (outside the top-`ratio` coordinates of the previous global delta), then projected.

Images are batches (N, C, H, W), (N, H, W), or flattened (N, D) with D = s² (one channel) or 3·s² (RGB),
as the tasks give them; pixel triggers and the edge-case rotation work on the image view of the batch.
"""

from __future__ import annotations

import math

import torch

from ...engine.budget import NORMS, project
from ...errors import InvalidArgumentError
from .base import AttackContext, TrainingAttack
from .model_poisoning import check_choice, check_number


# ---------------------------------------------------------------------------------------------- image helpers
def image_view(images: torch.Tensor, attack: str) -> torch.Tensor:
    """`images` as (N, C, H, W) (a view; flattened square inputs become one- or three-channel images)."""
    if images.dim() == 4:
        return images
    if images.dim() == 3:
        return images.unsqueeze(1)
    if images.dim() == 2:
        d = images.shape[1]
        for channels in (1, 3):
            side = math.isqrt(d // channels) if d % channels == 0 else 0
            if side and channels * side * side == d:
                return images.view(images.shape[0], channels, side, side)
    raise InvalidArgumentError(
        f"attack `{attack}`: cannot read inputs of shape {tuple(images.shape)} as images "
        "(need (N, C, H, W), (N, H, W), or (N, D) with D a square or three times a square)")


def rotate180(images: torch.Tensor, attack: str) -> torch.Tensor:
    """Every image turned upside down (a new tensor of the input's shape)."""
    return image_view(images, attack).flip(-2, -1).reshape(images.shape)


def poison_positions(batch_size: int, fraction: float, generator: torch.Generator, device) -> torch.Tensor:
    """round(`fraction` × batch) distinct random positions of a batch, drawn from `generator`."""
    count = min(batch_size, int(fraction * batch_size + 0.5))
    order = torch.randperm(batch_size, generator=generator, device=generator.device)
    return order[:count].to(device)


class PixelTrigger:
    """DBA's global pattern (Xie et al., 2020): `parts` horizontal lines of `size` pixels, two per row of the
    pattern, `gap` pixels apart, from the top-left corner offset by `shift`, set to `value` in every channel.

    Defaults follow the paper's MNIST trigger (size 4, gap 2 on 28 × 28) scaled to the image: size =
    max(2, W // 7), gap = max(1, size // 2); an 8 × 8 digit gets lines of 2 pixels, 1 apart."""

    def __init__(self, attack: str, parts: int = 4, size: int | None = None, gap: int | None = None,
                 shift: int = 0, value: float = 1.0):
        self.attack = attack
        self.parts = check_number(attack, "parts", parts, low=1, integer=True)
        self.size = check_number(attack, "size", size, low=1, integer=True, allow_none=True)
        self.gap = check_number(attack, "gap", gap, low=0, integer=True, allow_none=True)
        self.shift = check_number(attack, "shift", shift, low=0, integer=True)
        self.value = check_number(attack, "value", value)
        self._cache: dict[tuple[int, int], torch.Tensor] = {}

    def masks(self, height: int, width: int) -> torch.Tensor:
        """(parts, H, W) booleans, one per part of the pattern."""
        key = (height, width)
        if key not in self._cache:
            size = self.size if self.size is not None else max(2, width // 7)
            gap = self.gap if self.gap is not None else max(1, size // 2)
            masks = torch.zeros(self.parts, height, width, dtype=torch.bool)
            for k in range(self.parts):
                row = (k // 2) * (1 + gap) + self.shift
                col = (k % 2) * (size + gap) + self.shift
                if row >= height or col + size > width:
                    raise InvalidArgumentError(
                        f"attack `{self.attack}`: the trigger ({self.parts} parts of {size} pixels, gap {gap}, "
                        f"shift {self.shift}) does not fit a {height}x{width} image")
                masks[k, row, col:col + size] = True
            self._cache[key] = masks
        return self._cache[key]

    def stamp(self, images: torch.Tensor, part: int | None = None) -> torch.Tensor:
        """A copy of `images` with one part of the pattern (`part`) or the whole pattern (None) stamped."""
        view = image_view(images, self.attack)
        masks = self.masks(view.shape[-2], view.shape[-1]).to(view.device)
        mask = masks.any(dim=0) if part is None else masks[part % self.parts]
        out = view.clone()
        out[..., mask] = self.value
        return out.reshape(images.shape)


def _check_label(attack: str, name: str, value, allow_none: bool = True):
    return check_number(attack, name, value, low=0, integer=True, allow_none=allow_none)


def _empty_like(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return images[:0], labels[:0]


# ---------------------------------------------------------------------------------------------- label flip
class LabelFlip(TrainingAttack):
    """Label flipping. ``source`` and ``target`` given (default 0 → 1): a `fraction` of the source-class samples
    are relabelled `target`, and success is the share of source-class test samples classified as `target`.
    Only ``target``: every other label → target (all-to-one). Neither: every label y → C − 1 − y with C =
    `num_classes` (required then); untargeted (measured by accuracy)."""

    name = "labelflip"

    def __init__(self, source: int | None = 0, target: int | None = 1, num_classes: int | None = None,
                 fraction: float = 1.0):
        self.source = _check_label(self.name, "source", source)
        self.target = _check_label(self.name, "target", target)
        self.num_classes = check_number(self.name, "num_classes", num_classes, low=2, integer=True, allow_none=True)
        self.fraction = check_number(self.name, "fraction", fraction, low=0, high=1, low_open=True)
        if self.target is None and self.source is not None:
            raise InvalidArgumentError(f"attack `{self.name}`: `target` must be given when `source` is.")
        if self.target is None and self.num_classes is None:
            raise InvalidArgumentError(
                f"attack `{self.name}`: `num_classes` must be given for the all-label flip (no source and target).")
        if self.num_classes is not None:
            for label in ("source", "target"):
                value = getattr(self, label)
                if value is not None and value >= self.num_classes:
                    raise InvalidArgumentError(
                        f"attack `{self.name}`: `{label}` must be < num_classes ({self.num_classes}), but is {value}.")
        if self.source is not None and self.source == self.target:
            raise InvalidArgumentError(f"attack `{self.name}`: `source` and `target` must differ, both are {self.source}.")
        self.targeted = self.target is not None

    def flipped(self, labels: torch.Tensor) -> torch.Tensor:
        """The labels every eligible sample would get."""
        if self.target is None:
            return self.num_classes - 1 - labels
        return torch.full_like(labels, self.target)

    def eligible(self, labels: torch.Tensor) -> torch.Tensor:
        if self.target is None:
            return torch.ones_like(labels, dtype=torch.bool)
        if self.source is None:
            return labels != self.target
        return labels == self.source

    def poison_batch(self, images, labels, generator, client_index=0):
        eligible = self.eligible(labels)
        if self.fraction < 1:
            draw = torch.rand(labels.shape, generator=generator, device=generator.device).to(labels.device)
            eligible = eligible & (draw < self.fraction)
        return images, torch.where(eligible, self.flipped(labels), labels)

    def backdoor(self, images, labels):
        if not self.targeted:
            return None
        keep = self.eligible(labels)
        return images[keep], self.flipped(labels[keep])


# ---------------------------------------------------------------------------------------------- scaling
class Scaling(TrainingAttack):
    """Model replacement / scaling (Bagdasaryan et al., AISTATS 2020): the delta sent is `scale` × the local
    delta (γ ≈ n/η, the number of clients over the server learning rate; default 20). With `target` set the
    client also trains on a backdoor: a `fraction` of every batch gets the full :class:`PixelTrigger` pattern
    and label `target` (then targeted); without it the attack only boosts the honest delta."""

    name = "scaling"

    def __init__(self, scale: float = 20.0, target: int | None = None, fraction: float = 0.32):
        self.scale = check_number(self.name, "scale", scale, low=0, low_open=True)
        self.target = _check_label(self.name, "target", target)
        self.fraction = check_number(self.name, "fraction", fraction, low=0, high=1)
        self.targeted = self.target is not None
        self.trigger = PixelTrigger(self.name)

    def poison_batch(self, images, labels, generator, client_index=0):
        if self.target is None:
            return images, labels
        return _stamp_batch(self.trigger, images, labels, generator, self.fraction, self.target, None)

    def finalize(self, delta, context=None):
        return delta * self.scale

    def backdoor(self, images, labels):
        if self.target is None:
            return None
        return _backdoor_all_to_one(self.trigger, images, labels, self.target)


def _stamp_batch(trigger: PixelTrigger, images, labels, generator, fraction, target, part):
    positions = poison_positions(labels.shape[0], fraction, generator, labels.device)
    if not len(positions):
        return images, labels
    images, labels = images.clone(), labels.clone()
    images[positions] = trigger.stamp(images[positions], part)
    labels[positions] = target
    return images, labels


def _backdoor_all_to_one(trigger: PixelTrigger, images, labels, target):
    keep = labels != target
    return trigger.stamp(images[keep]), torch.full_like(labels[keep], target)


# ---------------------------------------------------------------------------------------------- DBA
class DBA(TrainingAttack):
    """Distributed backdoor attack (Xie et al., ICLR 2020), all-to-one: malicious client i stamps part
    i % `parts` of the global :class:`PixelTrigger` on a `fraction` of every batch (default 0.32, FLPoison's) and
    relabels those samples `target`; the test stamps the whole pattern on every non-target test image.
    `scale` multiplies the delta sent (the paper's ×100 belongs to its single-shot setting; default 1)."""

    name = "dba"
    targeted = True

    def __init__(self, parts: int = 4, target: int = 0, fraction: float = 0.32, size: int | None = None,
                 gap: int | None = None, shift: int = 0, value: float = 1.0, scale: float = 1.0):
        self.trigger = PixelTrigger(self.name, parts, size, gap, shift, value)
        self.parts, self.size, self.gap, self.shift, self.value = parts, size, gap, shift, value
        self.target = _check_label(self.name, "target", target, allow_none=False)
        self.fraction = check_number(self.name, "fraction", fraction, low=0, high=1)
        self.scale = check_number(self.name, "scale", scale, low=0, low_open=True)

    def poison_batch(self, images, labels, generator, client_index=0):
        part = int(client_index) % self.parts
        return _stamp_batch(self.trigger, images, labels, generator, self.fraction, self.target, part)

    def finalize(self, delta, context=None):
        return delta * self.scale if self.scale != 1 else delta

    def backdoor(self, images, labels):
        return _backdoor_all_to_one(self.trigger, images, labels, self.target)


# ---------------------------------------------------------------------------------------------- parameter-space helpers
def project_onto_ball(vector: torch.Tensor, center: torch.Tensor, eps: float, norm: str = "l2") -> torch.Tensor:
    """`vector` moved into the `norm` ball of radius `eps` around `center`: the perturbation engine's
    :func:`~artshield.engine.budget.project` on the flattened difference (one sample)."""
    delta = project((vector - center).reshape(1, -1), eps, norm).reshape(vector.shape)
    return center + delta


# ---------------------------------------------------------------------------------------------- edge-case PGD
class EdgeCasePGD(TrainingAttack):
    """Edge-case backdoor with PGD (Wang et al., NeurIPS 2020, "Attack of the Tails").

    Edge cases (our choice, since our tasks ship no ARDIS/Southwest sets): images of class `source` turned
    upside down, a rare and out-of-distribution subgroup of every task, labelled `target`. In every batch a
    `fraction` of the positions (default 0.5) is replaced by edge cases made from the batch's source-class
    images (a batch without any keeps its clean samples). After every local step the local model is projected
    onto the `norm` ball (default L2) of radius `eps` (default 0.25, the paper's MNIST value; 0.083 for
    CIFAR-10) around the global model, on the perturbation engine; ``finalize`` projects once more and
    multiplies by `scale` (model replacement; default 1, the paper's "PGD with replacement" uses ~50).
    ASR: the share of upside-down source-class test images classified as `target`."""

    name = "edge-pgd"
    targeted = True

    def __init__(self, eps: float = 0.25, norm: str = "l2", source: int = 0, target: int = 1,
                 fraction: float = 0.5, scale: float = 1.0):
        self.eps = check_number(self.name, "eps", eps, low=0, low_open=True)
        self.norm = check_choice(self.name, "norm", norm, NORMS)
        self.source = _check_label(self.name, "source", source, allow_none=False)
        self.target = _check_label(self.name, "target", target, allow_none=False)
        if self.source == self.target:
            raise InvalidArgumentError(f"attack `{self.name}`: `source` and `target` must differ, both are {source}.")
        self.fraction = check_number(self.name, "fraction", fraction, low=0, high=1)
        self.scale = check_number(self.name, "scale", scale, low=0, low_open=True)

    def edge_cases(self, images: torch.Tensor) -> torch.Tensor:
        return rotate180(images, self.name)

    def poison_batch(self, images, labels, generator, client_index=0):
        pool = (labels == self.source).nonzero().flatten()
        positions = poison_positions(labels.shape[0], self.fraction, generator, labels.device)
        if not len(pool) or not len(positions):
            return images, labels
        pick = torch.randint(len(pool), (len(positions),), generator=generator, device=generator.device)
        images, labels = images.clone(), labels.clone()
        images[positions] = self.edge_cases(images[pool[pick.to(pool.device)]])
        labels[positions] = self.target
        return images, labels

    def constrain(self, vector, global_vector):
        return project_onto_ball(vector, global_vector, self.eps, self.norm)

    def finalize(self, delta, context=None):
        delta = project(delta.reshape(1, -1), self.eps, self.norm).reshape(delta.shape)
        return delta * self.scale if self.scale != 1 else delta

    def backdoor(self, images, labels):
        keep = labels == self.source
        return self.edge_cases(images[keep]), torch.full_like(labels[keep], self.target)


# ---------------------------------------------------------------------------------------------- Neurotoxin
class Neurotoxin(TrainingAttack):
    """Neurotoxin (Zhang et al., ICML 2022): the backdoor (the full :class:`PixelTrigger` pattern on a
    `fraction` of every batch, label `target`) is trained only on coordinates outside the top-`ratio` share
    (by magnitude) of the previous global delta — those the benign clients update most — and the local
    model is kept inside an L2 ball of radius `eps` (default 0.2, FLPoison's norm bound; None for none)
    around the global model.

    The mask comes from :attr:`AttackContext.previous_global_delta` in ``finalize``. During training
    (``constrain`` only sees vectors) it comes from the last two global models this attack object has seen,
    which is the previous global delta whenever the attacker took part in the previous round; ``finalize``
    zeroes the masked coordinates again, so the delta sent never touches the previous top-`ratio`
    coordinates. The first round (no previous delta) is unmasked."""

    name = "neurotoxin"
    targeted = True

    def __init__(self, ratio: float = 0.1, eps: float | None = 0.2, target: int = 0, fraction: float = 0.32):
        self.ratio = check_number(self.name, "ratio", ratio, low=0, high=1)
        self.eps = check_number(self.name, "eps", eps, low=0, low_open=True, allow_none=True)
        self.target = _check_label(self.name, "target", target, allow_none=False)
        self.fraction = check_number(self.name, "fraction", fraction, low=0, high=1)
        self.trigger = PixelTrigger(self.name)
        self._seen_global: torch.Tensor | None = None
        self._keep: torch.Tensor | None = None  # (d,) bool: coordinates the attack may change

    def keep_mask(self, previous_global_delta: torch.Tensor) -> torch.Tensor | None:
        """(d,) booleans, False on the top-`ratio` coordinates of |previous global delta|; None if k = 0."""
        flat = previous_global_delta.reshape(-1)
        k = int(self.ratio * flat.numel())
        if k <= 0:
            return None
        keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
        keep[flat.abs().topk(k).indices] = False
        return keep

    def _track(self, global_vector: torch.Tensor) -> None:
        seen = self._seen_global
        if seen is not None and (seen is global_vector or (seen.shape == global_vector.shape
                                                           and torch.equal(seen, global_vector))):
            return
        if seen is not None and seen.shape == global_vector.shape:
            self._keep = self.keep_mask(global_vector.detach() - seen)
        self._seen_global = global_vector.detach().clone()

    def _confine(self, delta: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        if keep is not None:
            delta = delta * keep.to(delta.device).reshape(delta.shape)
        if self.eps is not None:
            delta = project(delta.reshape(1, -1), self.eps, "l2").reshape(delta.shape)
        return delta

    def poison_batch(self, images, labels, generator, client_index=0):
        return _stamp_batch(self.trigger, images, labels, generator, self.fraction, self.target, None)

    def constrain(self, vector, global_vector):
        self._track(global_vector)
        return global_vector + self._confine(vector - global_vector, self._keep)

    def finalize(self, delta, context: AttackContext | None = None):
        keep = self._keep
        if context is not None and context.previous_global_delta is not None:
            keep = self.keep_mask(context.previous_global_delta)
        return self._confine(delta, keep)

    def backdoor(self, images, labels):
        return _backdoor_all_to_one(self.trigger, images, labels, self.target)


TRAINING_ATTACKS: dict[str, type[TrainingAttack]] = {
    cls.name: cls for cls in (LabelFlip, Scaling, DBA, EdgeCasePGD, Neurotoxin)
}
