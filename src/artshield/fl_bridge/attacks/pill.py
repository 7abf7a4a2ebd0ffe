"""The pill: poison confined to a tiny critical subnet, sized to look benign (Guo et al., AAAI 2026).

"Poisoning with A Pill: Circumventing Detection in Federated Learning" (Guo, Wang, Song, Zheng, Hua, Guan,
Zhang; arXiv 2407.15389; AAAI 2026) is an attack-agnostic *augmentation*: it wraps any model-poisoning
attack (sign-flip, LIE, Fang, min-max...) in three stages, which :class:`Pill` implements on the project's
update vectors (one flattened delta per client, see :mod:`..updates`):

1. **Pill construction** — a greedy layer-by-layer search for a tiny connected subnet ("pill") of
   critical neurons: a start neuron in the first layer, then in every following layer the neuron(s) most
   strongly connected to the ones already chosen, about one neuron per layer, the last layers left out.
   ``search="dynamic"`` repeats the search every round (the pill follows the model and the data),
   ``"static"`` keeps the first round's pill.
2. **Pill poisoning** — the wrapped (base) attack crafts its poison against the estimated benign update:
   the benign clients' updates when the attack is omniscient, else the attackers' own honest updates
   (the paper's "extra-trained" reference, see Choices).
3. **Pill injection** — every malicious client sends a benign update outside the pill and the base
   attack's poison inside it; the pill part is then scaled so that the update's cosine similarity to the
   benign mean (**SimAdjust**) and its L2 distance to that mean and its norm (**DisAdjust**) all lie within
   the range the benign updates themselves span.

A *neuron* is one output unit of a layer: a row of a Linear weight (``(out, in)``) or one output channel of
a convolution weight (``(out, in, k...)``), plus its bias entry. Layers are recognised in the layout by
name and shape: an entry whose name ends in ``weight`` with two or more dimensions, and the entry with the
same prefix ending in ``bias`` and shape ``(out,)`` if present; 1-D weights (norm layers) are not layers.

Choices
-------
The paper's full text was not available to us, and no public code exists. What we had: the abstract, the
reviews of its OpenReview version (which say that the pill search starts from a neuron of the first layer
and proceeds layer by layer, that the benign update is estimated as the mean of the compromised clients'
extra-trained updates, and that SimAdjust and DisAdjust, lines 16-17 of the paper's Algorithm 1, keep the
magnitude of the change in line with benign updates) and third-party summaries ("one neuron per layer
except the last two layers", "approximate max pill search", static and dynamic search patterns). The
following are our decisions, each a reading of those sources; they are the knobs to check first against
the paper.

- **Pill = whole neurons.** Selected neurons contribute their whole row / output channel and bias entry,
  so the pill's size is ``neurons_per_layer`` x (row size + 1) per eligible layer.
- **Last layers untouched.** "About one neuron per layer except the last two layers" is read as: the last
  ``skip_last_layers`` (default 2) recognised layers (the classifier head) are left out of the pill, as
  far as the pill still spans two layers: a model with 3 layers skips one, a model with 2 (the digits
  task's 64-32-10 MLP) skips none, so its pill is one hidden neuron and the class row most connected to
  it (skipping both would leave no layer; a single first-layer neuron, the earlier reading, carried too
  little to matter), and a one-layer model uses that layer.
- **Importance** (``importance="auto"``): the absolute gradient of the attackers' loss at the global
  model (``ctx.local_loss``) when given — the parameters whose change moves the loss most on the
  attackers' data; otherwise the absolute mean of the attackers' honest updates this round (what their
  training moves most). ``"weight"`` (absolute global weights) is offered as the data-free variant. The
  sources say only that the search finds "critical parameters"; which score the paper uses is unknown.
- **Approximate max pill search** (greedy path): first eligible layer: the neurons with the largest total
  row importance (the start point); every following layer: the neurons with the largest importance of
  the weights that connect them to the neurons chosen in the previous layer (input channels of a
  convolution, or their blocks of a flattened Linear input after a convolution), row importance breaking
  ties. A layer whose input cannot be matched to the previous layer's outputs is scored by whole rows.
  One pill is shared by all malicious clients (they collude and search on the same signal).
- **Benign estimate / knowledge.** ``knowledge="omniscient"`` (the default, like the project's LIE,
  min-max, IPM): the pill always asks for the benign updates (``needs_benign`` True whatever the base) and
  they are the reference for the benign mean and the stealth ranges; ``"own"``: the attackers' own honest
  updates are (the paper's partial-knowledge setting; ``needs_benign`` is then the base's). The paper
  trains the reference for extra local epochs ("extra-trained"); an attack object cannot train, so the
  round's honest updates stand in for it. The base attack runs as it would alone: a base that does not
  need benign updates (sign-flip) gets ``benign=None``, one that does gets them (or ``own`` if none came).
  Before this choice the pill of a non-omniscient base (sign-flip) had only the attackers' own updates to
  draw ranges from, and with two attackers every one of them sat on a range edge: scale 0, the honest
  update sent, the attack a no-op.
- **Injection.** Outside the pill client ``i`` sends its own honest update (``carrier="own"``, natural
  per-client diversity, no added noise) or the benign mean (``carrier="mean"``). Inside the pill it sends
  ``carrier_i + scale_i * (poison_i - benign_mean)``: the base attack's deviation from the benign estimate
  (at scale 1 and ``carrier="mean"`` exactly the poison). A base without deviation carries nothing: LIE
  with the FLPoison/Blades z_max = Φ⁻¹((n-f-s)/(n-f)) has z = 0 at n = 10, f = 2 (it sends the benign
  mean), and so does its pill; give LIE a z (``base_params = {z = 1.0}``) or use n >= 20 (z = 0.16).
- **SimAdjust / DisAdjust** act on the pill part only (outside the pill the update stays exactly the
  carrier): ``scale_i`` is the largest value in ``[0, max_scale]`` for which cos(update, benign mean) is
  no lower than the benign updates' (``sim``), the L2 distance to the benign mean no larger than theirs
  and the L2 norm within their range (``dis``). One-sided where only one side looks suspicious: being
  closer to, or more aligned with, the benign mean than benign updates are is no sign of an attack.
  Ranges are [min, max] over the reference updates (``quantile`` > 0 narrows them to quantiles), widened
  by width / (m - 1) on both sides (the unbiased estimate of a population's range from m uniform draws:
  m samples understate it, and with m = 2 both samples are its edges). The scale may exceed 1
  (``max_scale``, default 10): the stealth budget saved by leaving the rest of the update benign is spent
  on a stronger pill. When no scale satisfies every bound (an attacker whose own update is itself an
  outlier), the scale with the least total violation (relative to each range's width) is used.
  ``adjust="none"`` sends the poison at scale 1 unchecked.
- **Like with like.** Each reference update is measured against the mean of the *other* reference updates
  (leave-one-out), as the attackers' updates are against a benign mean they are not part of (against a
  mean containing it, an update's distance is understated by about sqrt((m-1)/(m+1)), and an attacker's
  own honest update would look like an outlier). With the attackers' own updates as the reference, the
  sent updates are measured against their full mean, the best estimate of the benign mean.
- The search and the adjustment are vectorised: the adjustment needs a few inner products per client,
  after which every candidate scale is checked in closed form (a grid, then bisection to the boundary).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from ...engine.budget import norm_of
from ...errors import InvalidArgumentError
from ..updates import LayoutEntry, ParameterLayout
from .base import AttackContext, ModelPoisoning

SEARCHES = ("dynamic", "static")
ADJUSTMENTS = ("sim", "dis")
CARRIERS = ("own", "mean")
KNOWLEDGE = ("omniscient", "own")
IMPORTANCES = ("auto", "gradient", "update", "weight")

_GRID = 96  # candidate scales per client before bisection
_BISECT = 40
_INSET = 1e-3  # the bisection stays this fraction of each range's width inside it
_TIE = 1e-3  # weight of the row score when it only breaks ties between connection scores


@dataclass(frozen=True)
class PillLayer:
    """A layer whose output units can be pill neurons: its weight entry and optional bias entry."""

    weight: LayoutEntry
    bias: LayoutEntry | None

    @property
    def name(self) -> str:
        return self.weight.name

    @property
    def outputs(self) -> int:
        return self.weight.shape[0]

    @property
    def inputs(self) -> int:
        return self.weight.shape[1]

    @property
    def kernel(self) -> int:
        return math.prod(self.weight.shape[2:])

    @property
    def row_size(self) -> int:
        return self.inputs * self.kernel

    def neuron_indices(self, neurons: torch.Tensor) -> torch.Tensor:
        """Flat coordinates of the given neurons' rows (and bias entries) in the update vector."""
        rows = self.weight.start + neurons.view(-1, 1) * self.row_size + torch.arange(self.row_size,
                                                                                      device=neurons.device)
        pieces = [rows.reshape(-1)]
        if self.bias is not None:
            pieces.append(self.bias.start + neurons)
        return torch.cat(pieces)


def find_layers(layout: ParameterLayout) -> list[PillLayer]:
    """The layout's Linear/convolution-like layers, in layout order (see the module docstring)."""
    layers = []
    for entry in layout:
        if not entry.name.endswith("weight") or len(entry.shape) < 2 or entry.shape[0] == 0:
            continue
        bias_name = entry.name[: -len("weight")] + "bias"
        bias = layout[bias_name] if bias_name in layout else None
        if bias is not None and bias.shape != (entry.shape[0],):
            bias = None
        layers.append(PillLayer(entry, bias))
    return layers


@dataclass(frozen=True)
class PillSelection:
    """One round's pill: the chosen neurons per layer and their coordinates in the update vector."""

    indices: torch.Tensor  # (k,) sorted int64 coordinates
    neurons: dict[str, tuple[int, ...]]  # weight entry name -> chosen output units, in search order
    size: int  # d, the length of the update vector

    def mask(self, device=None, dtype=torch.float32) -> torch.Tensor:
        mask = torch.zeros(self.size, dtype=dtype, device=device)
        mask[self.indices.to(mask.device)] = 1
        return mask


def _parse_adjust(adjust: str) -> frozenset[str]:
    if not isinstance(adjust, str):
        raise InvalidArgumentError(f"pill `adjust` must be a string such as 'sim+dis', 'sim', 'dis' or 'none', "
                                   f"but is {adjust!r}")
    text = adjust.strip().lower()
    if text == "none":
        return frozenset()
    parts = [p.strip() for p in text.split("+")]
    if not parts or any(p not in ADJUSTMENTS for p in parts) or len(set(parts)) != len(parts):
        raise InvalidArgumentError(f"pill `adjust` must be 'sim+dis', 'sim', 'dis' or 'none', but is {adjust!r}")
    return frozenset(parts)


def _choice(label: str, value, options: tuple[str, ...]) -> str:
    if value not in options:
        raise InvalidArgumentError(f"pill `{label}` must be one of {', '.join(options)}, but is {value!r}")
    return value


def _whole(label: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidArgumentError(f"pill `{label}` must be an integer >= {minimum}, but is {value!r}")
    return value


class Pill(ModelPoisoning):
    """Wraps a model-poisoning attack so that its poison travels in a tiny critical subnet (see module doc)."""

    name = "pill"

    def __init__(self, base: ModelPoisoning, *, neurons_per_layer: int = 1, skip_last_layers: int = 2,
                 search: str = "dynamic", adjust: str = "sim+dis", importance: str = "auto",
                 carrier: str = "own", max_scale: float = 10.0, quantile: float = 0.0,
                 knowledge: str = "omniscient"):
        if not isinstance(base, ModelPoisoning):
            raise InvalidArgumentError(f"pill `base` must be a model-poisoning attack, but is {type(base).__name__}")
        if isinstance(base, Pill):
            raise InvalidArgumentError("pill `base` must not itself be a pill")
        self.base = base
        self.knowledge = _choice("knowledge", knowledge, KNOWLEDGE)
        # Omniscient (the default, as for the project's LIE, min-max, IPM...): the benign updates define the
        # stealth ranges whatever the base needs; "own": only if the base itself needs them.
        self.needs_benign = self.knowledge == "omniscient" or bool(base.needs_benign)
        self.neurons_per_layer = _whole("neurons_per_layer", neurons_per_layer, 1)
        self.skip_last_layers = _whole("skip_last_layers", skip_last_layers, 0)
        self.search = _choice("search", search, SEARCHES)
        self.adjust = adjust
        self._adjust = _parse_adjust(adjust)
        self.importance = _choice("importance", importance, IMPORTANCES)
        self.carrier = _choice("carrier", carrier, CARRIERS)
        if isinstance(max_scale, bool) or not isinstance(max_scale, int | float) or not (
                math.isfinite(max_scale) and max_scale > 0):
            raise InvalidArgumentError(f"pill `max_scale` must be a finite number > 0, but is {max_scale!r}")
        self.max_scale = float(max_scale)
        if isinstance(quantile, bool) or not isinstance(quantile, int | float) or not 0 <= quantile < 0.5:
            raise InvalidArgumentError(f"pill `quantile` must be a number in [0, 0.5), but is {quantile!r}")
        self.quantile = float(quantile)
        self._static: tuple[tuple[str, ...], int, PillSelection] | None = None
        self.last_selection: PillSelection | None = None  # the pill of the latest round, for reports and tests
        self.last_scales: torch.Tensor | None = None  # (f,) the pill scale each client got

    def config(self) -> dict:
        return {"base": self.base.name, "neurons_per_layer": self.neurons_per_layer,
                "skip_last_layers": self.skip_last_layers, "search": self.search, "adjust": self.adjust,
                "importance": self.importance, "carrier": self.carrier, "max_scale": self.max_scale,
                "quantile": self.quantile, "knowledge": self.knowledge}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "base")
        return f"Pill({self.base!r}, {params})"

    # -- stage 1: pill construction ---------------------------------------------------------------------

    def eligible_layers(self, layout: ParameterLayout) -> list[PillLayer]:
        layers = find_layers(layout)
        if not layers:
            raise InvalidArgumentError("the pill found no Linear or convolution layer (an entry named '*weight' "
                                       "with 2 or more dimensions) in the model's parameters")
        # Shallow models: the skipped head shrinks so that the pill still spans two layers (a path) when the
        # model has two, and one when it has one (see Choices).
        skip = min(self.skip_last_layers, max(len(layers) - 2, 0))
        return layers[: len(layers) - skip]

    def importance_of(self, ctx: AttackContext) -> torch.Tensor:
        """(d,) non-negative importance of every parameter this round (see Choices)."""
        kind = self.importance
        if kind == "auto":
            kind = "gradient" if ctx.local_loss is not None else "update"
        if kind == "gradient":
            if ctx.local_loss is None:
                raise InvalidArgumentError("pill importance 'gradient' needs the attackers' loss "
                                           "(AttackContext.local_loss), which this round did not provide")
            with torch.enable_grad():
                point = ctx.global_vector.detach().clone().requires_grad_(True)
                loss = ctx.local_loss(point)
                (grad,) = torch.autograd.grad(loss, point)
            return grad.detach().abs()
        if kind == "weight":
            return ctx.global_vector.detach().abs()
        return ctx.own.detach().mean(dim=0).abs()

    def select(self, ctx: AttackContext) -> PillSelection:
        """This round's pill: recomputed every round (dynamic) or kept from the first one (static)."""
        key = (tuple(ctx.layout.names), ctx.layout.size)
        if self.search == "static" and self._static is not None and self._static[:2] == key:
            return self._static[2]
        selection = self._search(ctx.layout, self.importance_of(ctx).to(torch.float32))
        if self.search == "static":
            self._static = (*key, selection)
        return selection

    def _search(self, layout: ParameterLayout, importance: torch.Tensor) -> PillSelection:
        if importance.shape != (layout.size,):
            raise InvalidArgumentError(f"pill importance has shape {tuple(importance.shape)}, the model's "
                                       f"update has ({layout.size},)")
        chosen: dict[str, tuple[int, ...]] = {}
        pieces = []
        previous: tuple[PillLayer, torch.Tensor] | None = None
        for layer in self.eligible_layers(layout):
            weights = importance[layer.weight.span].view(layer.outputs, layer.inputs, layer.kernel)
            rows = weights.sum(dim=(1, 2))
            if layer.bias is not None:
                rows = rows + importance[layer.bias.span]
            score = rows
            links = self._connections(weights, layer, previous)
            if links is not None:
                score = _unit(links) + _TIE * _unit(rows)
            k = min(self.neurons_per_layer, layer.outputs)
            neurons = torch.topk(score, k).indices
            chosen[layer.name] = tuple(int(n) for n in neurons)
            pieces.append(layer.neuron_indices(neurons))
            previous = (layer, neurons)
        indices = torch.unique(torch.cat(pieces)).to(torch.int64)
        return PillSelection(indices=indices, neurons=chosen, size=layout.size)

    @staticmethod
    def _connections(weights: torch.Tensor, layer: PillLayer,
                     previous: tuple[PillLayer, torch.Tensor] | None) -> torch.Tensor | None:
        """(out,) importance of the weights linking each output unit to the previous layer's pill neurons."""
        if previous is None:
            return None
        before, neurons = previous
        if layer.inputs == before.outputs:  # Linear after Linear, convolution after convolution
            return weights[:, neurons, :].sum(dim=(1, 2))
        if layer.kernel == 1 and layer.inputs % before.outputs == 0:  # Linear on a flattened (C, H, W) map
            block = layer.inputs // before.outputs
            return weights.view(layer.outputs, before.outputs, block)[:, neurons, :].sum(dim=(1, 2))
        return None

    # -- stages 2 and 3: pill poisoning and injection -------------------------------------------------------

    def craft(self, context: AttackContext) -> torch.Tensor:
        own = context.own
        if own.dim() != 2 or own.shape[1] != context.layout.size:
            raise InvalidArgumentError(f"the attackers' updates must have shape (f, {context.layout.size}), "
                                       f"got {tuple(own.shape)}")
        selection = self.select(context)
        self.last_selection = selection

        has_benign = context.benign is not None and len(context.benign) > 0
        if not self.base.needs_benign:
            base_context = replace(context, benign=None)  # the base runs as it would on its own
        elif not has_benign:
            base_context = replace(context, benign=own)
        else:
            base_context = replace(context)
        poison = self.base.craft(base_context)
        if tuple(poison.shape) != tuple(own.shape):
            raise InvalidArgumentError(f"the pill's base attack {self.base.name!r} returned shape "
                                       f"{tuple(poison.shape)}, expected {tuple(own.shape)}")
        poison = poison.to(own)

        reference = (context.reference if self.knowledge == "omniscient" else own).to(own)
        mean = reference.mean(dim=0)
        carrier = own if self.carrier == "own" else mean.expand_as(own)
        # The pill part: the base attack's deviation from the benign estimate, on the pill's coordinates only
        # (it is zero elsewhere, so everything below works on (f, k) rather than (f, d)).
        index = selection.indices.to(own.device)
        pill = poison[:, index] - mean[index]

        if self._adjust:
            scales = self._scales(carrier, pill, index, reference, mean)
        else:
            scales = torch.ones(own.shape[0], dtype=own.dtype, device=own.device)
        self.last_scales = scales
        sent = carrier.clone()
        sent[:, index] += scales.view(-1, 1) * pill
        return sent

    def _scales(self, carrier: torch.Tensor, pill: torch.Tensor, index: torch.Tensor, reference: torch.Tensor,
                mean: torch.Tensor) -> torch.Tensor:
        """(f,) the largest pill scale in [0, max_scale] that keeps each update inside the benign ranges."""
        bounds = self._benign_ranges(reference, mean)
        # Six inner products per client give every metric of carrier + s * pill in closed form.
        on_pill = carrier[:, index]
        terms = {
            "cm": carrier @ mean, "pm": pill @ mean[index], "cc": norm_of(carrier, "l2") ** 2,
            "cp": (on_pill * pill).sum(1), "pp": (pill * pill).sum(1),
        }
        terms = {k: v.to(torch.float64) for k, v in terms.items()}
        mean_sq = mean.to(torch.float64).dot(mean.to(torch.float64))

        def violation(s: torch.Tensor, inset: float = 0.0) -> torch.Tensor:
            """(f, K) summed relative violation at scales s (f, K); `inset` > 0 shrinks every range by that
            fraction of its width (the bisection's safety margin against rounding), 0 allows rounding slack."""
            cm, pm, cc, cp, pp = (terms[k].unsqueeze(1) for k in ("cm", "pm", "cc", "cp", "pp"))
            norm_sq = (cc + 2 * s * cp + s * s * pp).clamp_min(0)
            metrics = {
                "norm": norm_sq.sqrt(),
                "dist": (norm_sq - 2 * (cm + s * pm) + mean_sq).clamp_min(0).sqrt(),
                "cos": (cm + s * pm) / (norm_sq.sqrt() * mean_sq.sqrt()).clamp_min(1e-30),
            }
            total = torch.zeros_like(s)
            for key, (low, high) in bounds.items():
                value = metrics[key]
                width = max(high - low, 1e-12 * max(abs(high), abs(low), 1e-30))
                tolerance = inset * -width if inset else 1e-6 * max(abs(high), abs(low), width)
                over = (value - high - tolerance).clamp_min(0) + (low - tolerance - value).clamp_min(0)
                total = total + over / width
            return total

        f = carrier.shape[0]
        grid = torch.cat([torch.zeros(1, dtype=torch.float64),
                          self.max_scale * torch.logspace(-4, 0, _GRID - 1, dtype=torch.float64)])
        grid = grid.to(carrier.device)
        table = violation(grid.expand(f, -1))
        feasible = table <= 0
        has = feasible.any(dim=1)
        last = torch.where(has, _last_true(feasible), table.argmin(dim=1))
        scales = grid[last]
        # Push each feasible client's scale up to the boundary between its last feasible grid point and the next.
        low, high = scales.clone(), grid[(last + 1).clamp_max(_GRID - 1)]
        refine = has & (last < _GRID - 1)
        for _ in range(_BISECT):
            middle = (low + high) / 2
            ok = violation(middle.unsqueeze(1), inset=_INSET).squeeze(1) <= 0
            low = torch.where(refine & ok, middle, low)
            high = torch.where(refine & ~ok, middle, high)
        scales = torch.where(refine, low, scales)
        return scales.to(carrier.dtype)

    def _benign_ranges(self, reference: torch.Tensor, mean: torch.Tensor) -> dict[str, tuple[float, float]]:
        """[low, high] of each checked metric over the reference (benign-estimate) updates.

        Each reference update is measured against the mean of the *other* ones (leave-one-out): the server
        compares a sent update with benign updates it is not part of; measuring a reference update against a
        mean that contains it would understate its distance (by a factor about sqrt((m - 1) / (m + 1)) for
        independent noise) and overstate its cosine. Each range [min, max] of the m values is then widened
        by width / (m - 1) on both sides (the unbiased range of m uniform draws): m samples understate the
        population's range, and with m = 2 (two attackers without benign updates) the sample range is an
        edge for both of them.
        """
        # One matrix-vector product and the row norms give all three metrics without an (m, d) temporary.
        m = reference.shape[0]
        dots = (reference @ mean).to(torch.float64)
        norms = norm_of(reference, "l2").to(torch.float64)
        mean_sq = torch.full_like(norms, float(mean.to(torch.float64).dot(mean.to(torch.float64))))
        if m > 1:  # the mean of the others, in closed form
            mean_sq = (m * m * mean_sq - 2 * m * dots + norms * norms) / (m - 1) ** 2
            dots = (m * dots - norms * norms) / (m - 1)
        mean_sq = mean_sq.clamp_min(0)
        values: dict[str, torch.Tensor] = {}
        if "sim" in self._adjust and float(mean.norm()) > 0:
            values["cos"] = dots / (norms * mean_sq.sqrt()).clamp_min(1e-30)
        if "dis" in self._adjust:
            values["norm"] = norms
            values["dist"] = (norms * norms - 2 * dots + mean_sq).clamp_min(0).sqrt()
        q = torch.tensor([self.quantile, 1 - self.quantile], dtype=torch.float64)
        ranges = {}
        for key, v in values.items():
            low, high = torch.quantile(v.detach().cpu(), q).tolist()
            if m > 1:
                pad = (high - low) / (m - 1)
                low, high = low - pad, high + pad
            # One-sided where only one side looks suspicious: being closer to the benign mean, or more aligned
            # with it, than the benign updates are is no sign of an attack (and an attacker's honest update
            # often is, measured against a mean it is part of).
            if key == "cos":
                low, high = max(low, -1.0), 1.0
            elif key == "dist":
                low = 0.0
            else:
                low = max(low, 0.0)
            ranges[key] = (low, high)
        return ranges


def _unit(values: torch.Tensor) -> torch.Tensor:
    top = values.abs().max()
    return values / top if float(top) > 0 else values


def _last_true(flags: torch.Tensor) -> torch.Tensor:
    """(f,) index of the last True in each row of (f, K) booleans (0 where a row has none)."""
    positions = torch.arange(flags.shape[1], device=flags.device).expand_as(flags)
    return torch.where(flags, positions, torch.zeros_like(positions)).amax(dim=1)
