"""Bayesian few-shot fine-tuning: mean-field Gaussian weights against the corruption stage.

Wu, Zhang et al., "Exploring Diffusion Models' Corruption Stage in Few-Shot Fine-tuning and Mitigating with
Bayesian Neural Networks", arXiv 2405.19931 (code: ``Nicholas0228/BNN-Finetuning-DMs``). During few-shot
fine-tuning, image fidelity first rises, then *drops* while noisy patterns appear (the "corruption stage"),
then recovers into overfitting and copies of the training images. The paper attributes the corruption to a
narrowed learned distribution and widens it again by making some weights Bayesian: each selected weight has a
Gaussian posterior ``N(mu, sigma^2)``, a fresh ``w = mu + sigma * eps`` is sampled at every training forward
pass, and the loss is "the expectation of the diffusion loss + regularisation with the pretrained DMs"
(abstract), i.e. a KL term to a prior centred on the pretrained weights. Inference uses the means, so it costs
nothing extra.

How the trainer uses this module::

    add_bayesian_args(parser)                       # --bayesian and the --bayes_* flags
    cfg = BayesianConfig.from_args(args)
    names = make_bayesian(unet, cfg, args.method)   # after add_adapter (LoRA), before building the optimiser
    loss = diffusion_loss + bayesian_loss(unet, cfg, num_examples=len(train_dataset))
    with deterministic_state(unet):                 # validation and saving: plain Linear layers with the means
        save(...)

Which layers (``--bayes_layers``, mirroring the reference's ``--convert_*`` flags):

* DreamBooth / full (``attn_ff``, the default): every ``nn.Linear`` of the transformer blocks in the UNet's
  down / mid / up blocks -- self-attention ``attn1`` q/k/v/out and the feed-forward network -- but not
  cross-attention ``attn2`` unless ``--bayes_include_cross_attention``; never convolutions, norms, time
  embeddings or the text encoder (the reference's ``run_scripts_bayes_dreambooth.sh``). ``all_linear`` is the
  reference's literal rule (every Linear of those blocks except ``time_emb_proj``), which on SD 2.x also takes
  the transformers' linear ``proj_in``/``proj_out``; ``attn`` and ``ff`` take one half of ``attn_ff``.
* LoRA (``lora_up``, the default): only the LoRA up matrices (peft's ``lora_B[adapter]``), all of them,
  cross-attention included, as the reference's ``LoRARandLinearLayer`` (its ``down``/A stays deterministic).
* ``--bayes_blocks`` restricts any of these to some of ``down``, ``mid``, ``up`` or single sub-blocks
  (``up.1``), like the reference's ``--convert_{up,mid,down}_block`` / ``--convert_subblock_{0..3}``.

Deviations from the reference code, each deliberate:

1. **KL direction.** The reference's ``cal_KL(prior, posterior)`` computes KL(p || q) (prior first), the
   reverse of the variational ELBO. The default here, ``--bayes_kl_direction posterior_prior``, is the
   standard KL(q || p); ``prior_posterior`` reproduces the reference. The difference matters: KL(p || q) has
   ``(mu - mu_p)^2 / (2 sigma_q^2)``, which grows without bound as sigma shrinks and so drives sigma *up* to
   the size of the weight change, while KL(q || p) pulls sigma towards the prior's sigma.
2. **KL weight default 0.0.** The reference's parser default is ``lambda1=0.2``, but all three released Bayes
   scripts pass ``--lambda1=0.0`` (OFT via the prefix ``--lam 0.0``), so the released results use weight noise
   with learnable sigma as the only regulariser. We default to what the paper's experiments ran.
3. **KL normalisation** (``--bayes_kl_normalization``). The reference adds ``lambda1 * KL`` summed over all
   weights, unnormalised. Our default ``examples`` divides by the number of training examples, which makes
   ``diffusion_loss + KL / N`` the per-example negative ELBO of a model whose likelihood is a sum over N
   examples (Blundell et al. 2015). ``weights`` divides by the number of Bayesian weights (the mean KL per
   weight: a weight that means the same on the demo model and on SD), ``none`` is the reference.
4. **sigma is bounded on both sides.** The reference keeps a raw sigma clamped in place to >= 1e-7 at every
   forward, with no upper bound. Here sigma is stored directly (the same units as the reference, so the
   optimiser's step size in sigma is unchanged: a log or sigmoid parametrisation would change Adam's effective
   step in sigma by orders of magnitude at sigma ~ 0.01 and so change the reference's dynamics), and kept in
   ``[min_sigma, max_sigma]`` by projection: the forward pass and the KL use ``sigma.clamp(min, max)`` (with a
   straight-through gradient, so a sigma sitting on a bound can move back inside) and, after every optimiser
   step that updated it, the stored value is projected back in place (a global ``torch.optim`` post-step
   hook, registered on first use). Projecting inside ``forward`` as the reference does would modify a leaf
   that an earlier, not yet back-propagated graph (e.g. the KL term) may still hold.
5. **Bias is deterministic.** The reference also samples the bias with its own sigma; the brief and the
   LoRA variant (no bias) keep it deterministic, and the bias is a tiny fraction of the weights.
6. **The Bayesian layer *is* an** ``nn.Linear`` whose ``weight`` parameter is the mean (the same Parameter
   object as before conversion), plus one extra parameter ``sigma``. State-dict keys, peft (``lora_B``
   merging uses ``weight``) and diffusers code keep working; :func:`deterministic_state` hides sigma so the
   saved files are ordinary checkpoints (the reference rebuilds modules and needs ``convert_reverse``).
7. **The DreamBooth prior** is a frozen, non-persistent buffer copy of the converted layers' pretrained
   weights (the reference keeps a deep copy of the whole UNet, ``ori_unet``). It is not saved: resuming
   re-creates it from the pretrained model.
8. **Weight decay.** The reference's AdamW applies ``adam_weight_decay`` to sigma too. This module does not
   build the optimiser; :func:`sigma_parameters` lets a trainer put sigma in a group without decay. Decay on
   sigma only shrinks it by ``lr * wd * sigma`` per step (5e-8 relative at the reference's DreamBooth lr),
   so either choice is harmless.

Sampling follows the reference: one ``eps`` per forward pass, shared by the batch, drawn from torch's global
generator (which the trainer seeds with ``accelerate.utils.set_seed``); no local reparametrisation. Under
gradient checkpointing, ``torch.utils.checkpoint`` restores the RNG state before recomputing a block, so the
recomputed forward draws the same ``eps``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import weakref
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidArgumentError
from .config import (
    BAYES_KL_DIRECTIONS,
    BAYES_KL_NORMALIZATIONS,
    BAYES_LAYER_CHOICES,
    DEFAULT_INIT_SIGMA,
    DEFAULT_MAX_SIGMA,
    DEFAULT_MIN_SIGMA,
    DEFAULT_PRIOR_SIGMA,
    METHODS,
    BayesianConfig,
    add_arguments,
    parse_blocks,
)

logger = logging.getLogger(__name__)

# The flags' names, choices and defaults live with the trainer's other settings (finetune.config); the reasons
# for each default are in the module docstring and in the flags' help.
KL_DIRECTIONS = BAYES_KL_DIRECTIONS
KL_NORMALIZATIONS = BAYES_KL_NORMALIZATIONS
LAYER_CHOICES = BAYES_LAYER_CHOICES


# --------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------


def add_bayesian_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--bayesian`` and the ``--bayes_*`` flags (Wu et al., arXiv 2405.19931) to a trainer's parser (the
    fields of :class:`~artshield.finetune.config.TrainConfig` in its Bayesian group)."""
    add_arguments(parser, only="bayesian")


# --------------------------------------------------------------------------------------------------
# the layer
# --------------------------------------------------------------------------------------------------


def gaussian_kl(
    mu_q: torch.Tensor,
    sigma_q: torch.Tensor,
    mu_p: torch.Tensor | float,
    sigma_p: torch.Tensor | float,
) -> torch.Tensor:
    """Elementwise KL(N(mu_q, sigma_q^2) || N(mu_p, sigma_p^2)) in closed form.

    ``log(sigma_p / sigma_q) + (sigma_q^2 + (mu_q - mu_p)^2) / (2 sigma_p^2) - 1/2``. Swap the arguments for the
    other direction. (The reference additionally zeroes negative values, which only rounding can produce.)
    """
    sigma_p_t = torch.as_tensor(sigma_p, dtype=sigma_q.dtype, device=sigma_q.device)
    ratio = (sigma_q / sigma_p_t).square()
    return -0.5 * torch.log(ratio) + 0.5 * ratio + 0.5 * (mu_q - mu_p).square() / sigma_p_t.square() - 0.5


class _StraightThroughClamp(torch.autograd.Function):
    """``x.clamp(lo, hi)`` forward (exactly), identity backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None, None


# Live Bayesian layers, for the post-step projection of sigma (weak: converting never keeps a model alive).
_LIVE_LAYERS: weakref.WeakSet[BayesianLinear] = weakref.WeakSet()
_PROJECTION_HOOK = None


def _project_after_step(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    """Global optimiser post-step hook: project the sigma this optimiser updated back into its bounds."""
    if not _LIVE_LAYERS:
        return
    updated = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for layer in list(_LIVE_LAYERS):
        sigma = layer._parameters.get("sigma")
        if sigma is None:  # hidden by deterministic_state, or stripped
            sigma = layer._stashed_sigma
        if sigma is not None and id(sigma) in updated:
            layer.project_sigma_()


def _ensure_projection_hook() -> None:
    global _PROJECTION_HOOK
    if _PROJECTION_HOOK is None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        _PROJECTION_HOOK = register_optimizer_step_post_hook(_project_after_step)


class BayesianLinear(nn.Linear):
    """An ``nn.Linear`` with a mean-field Gaussian posterior over its weight (Wu et al., arXiv 2405.19931).

    ``weight`` is the posterior mean mu (the very Parameter of the converted layer), ``sigma`` (same shape)
    the posterior standard deviation, kept in ``[min_sigma, max_sigma]`` (clamped in ``forward``, projected
    after optimiser steps). In training mode every forward samples ``w = mu + sigma * eps`` with one
    ``eps ~ N(0, I)`` for the whole batch; in eval mode, or inside :func:`deterministic_state`, it is exactly
    ``F.linear(x, mu, bias)``. The bias is deterministic. The prior is ``N(prior_mean, prior_sigma^2)``, with
    ``prior_mean`` a frozen non-persistent buffer (the pretrained weight) or None for a zero-mean prior.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        init_sigma: float = DEFAULT_INIT_SIGMA,
        prior_sigma: float = DEFAULT_PRIOR_SIGMA,
        min_sigma: float = DEFAULT_MIN_SIGMA,
        max_sigma: float = DEFAULT_MAX_SIGMA,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if not 0 < min_sigma <= init_sigma <= max_sigma:
            raise InvalidArgumentError(
                f"sigma bounds must satisfy 0 < min_sigma <= init_sigma <= max_sigma, but are "
                f"{min_sigma}, {init_sigma}, {max_sigma}."
            )
        if not prior_sigma > 0:
            raise InvalidArgumentError(f"`prior_sigma` must be positive, but is {prior_sigma!r}.")
        self.min_sigma = float(min_sigma)
        self.max_sigma = float(max_sigma)
        self.prior_sigma = float(prior_sigma)
        self.sigma = nn.Parameter(torch.full_like(self.weight, float(init_sigma)))
        self.register_buffer("prior_mean", None, persistent=False)
        self._force_mean = 0  # > 0 inside deterministic_state (a counter, so the context nests)
        # Where deterministic_state keeps sigma while it is hidden. Set with object.__setattr__: nn.Module's
        # __setattr__ would register a Parameter value as a parameter again, defeating the hiding.
        object.__setattr__(self, "_stashed_sigma", None)
        _LIVE_LAYERS.add(self)
        _ensure_projection_hook()

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        *,
        init_sigma: float = DEFAULT_INIT_SIGMA,
        prior_sigma: float = DEFAULT_PRIOR_SIGMA,
        min_sigma: float = DEFAULT_MIN_SIGMA,
        max_sigma: float = DEFAULT_MAX_SIGMA,
        prior: str = "weights",
    ) -> BayesianLinear:
        """Convert `linear`, reusing its weight/bias Parameters (so mu starts at the existing weight).

        `prior`: ``"weights"`` centres the prior on a frozen copy of the current weight (DreamBooth/full: the
        pretrained weight), ``"zero"`` on 0 (LoRA up matrices, as the reference).
        """
        if prior not in ("weights", "zero"):
            raise InvalidArgumentError(f"`prior` must be 'weights' or 'zero', but is {prior!r}.")
        # Build on the meta device (no allocation, no random init), then adopt the real Parameters.
        layer = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            init_sigma=init_sigma,
            prior_sigma=prior_sigma,
            min_sigma=min_sigma,
            max_sigma=max_sigma,
            device="meta",
        )
        layer.weight = linear.weight
        layer.bias = linear.bias
        # sigma in the weight's dtype/device, but at least fp32: fp16 cannot hold small sigma updates (and the
        # diffusers scripts upcast trainable parameters to fp32 under mixed precision anyway).
        sigma_dtype = linear.weight.dtype if linear.weight.dtype in (torch.float32, torch.float64) else torch.float32
        layer.sigma = nn.Parameter(
            torch.full(linear.weight.shape, float(init_sigma), dtype=sigma_dtype, device=linear.weight.device)
        )
        if prior == "weights":
            layer.prior_mean = linear.weight.detach().clone()
        layer.train(linear.training)
        return layer

    def __setstate__(self, state: dict) -> None:
        # deepcopy / unpickling bypass __init__: register the copy for the post-step projection too.
        super().__setstate__(state)
        _LIVE_LAYERS.add(self)
        _ensure_projection_hook()

    # ------------------------------------------------------------------ sigma
    def clamped_sigma(self) -> torch.Tensor:
        """sigma as used: its value clamped into ``[min_sigma, max_sigma]``, its gradient passed straight through.

        The straight-through gradient makes optimiser step + post-step projection a projected gradient step:
        the gradient is evaluated at the projected point and always reaches the stored sigma, also when it sits
        exactly on a bound (a plain ``clamp`` can zero it there, e.g. when the float32 value of the bound
        rounds above the Python float).
        """
        return _StraightThroughClamp.apply(self._sigma_param(), self.min_sigma, self.max_sigma)

    def _sigma_param(self) -> nn.Parameter:
        sigma = self._parameters.get("sigma")
        return sigma if sigma is not None else self._stashed_sigma

    @torch.no_grad()
    def project_sigma_(self) -> None:
        """Project the stored sigma into ``[min_sigma, max_sigma]`` in place."""
        self._sigma_param().clamp_(self.min_sigma, self.max_sigma)

    # ------------------------------------------------------------------ forward
    @property
    def samples(self) -> bool:
        """Whether the next forward samples weights (training mode and not inside deterministic_state)."""
        return self.training and self._force_mean == 0

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.samples:
            return F.linear(input, self.weight, self.bias)
        sigma = self.clamped_sigma()
        eps = torch.randn_like(sigma)
        weight = self.weight + (sigma * eps).to(self.weight.dtype)
        return F.linear(input, weight, self.bias)

    # ------------------------------------------------------------------ KL
    def kl(self, direction: str = "posterior_prior") -> torch.Tensor:
        """Closed-form Gaussian KL summed over this layer's weights, 0-dim fp32.

        ``posterior_prior`` = KL(q || p), the ELBO's; ``prior_posterior`` = KL(p || q), the reference's.
        """
        mu = self.weight.float()
        sigma = self.clamped_sigma().float()
        prior_mu = self.prior_mean.float() if self.prior_mean is not None else torch.zeros_like(mu)
        if direction == "posterior_prior":
            return gaussian_kl(mu, sigma, prior_mu, self.prior_sigma).sum()
        if direction == "prior_posterior":
            prior_sigma = torch.full_like(sigma, self.prior_sigma)
            return gaussian_kl(prior_mu, prior_sigma, mu, sigma).sum()
        raise InvalidArgumentError(f"`direction` must be one of {', '.join(KL_DIRECTIONS)}, but is {direction!r}.")

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` sharing this layer's mean weight and bias Parameters."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        linear.weight = self.weight
        linear.bias = self.bias
        linear.train(self.training)
        return linear

    def extra_repr(self) -> str:
        prior = "pretrained" if self.prior_mean is not None else "zero"
        return (
            f"{super().extra_repr()}, sigma in [{self.min_sigma:g}, {self.max_sigma:g}], "
            f"prior=N({prior}, {self.prior_sigma:g}^2)"
        )


# --------------------------------------------------------------------------------------------------
# model-level functions
# --------------------------------------------------------------------------------------------------


def bayesian_layers(module: nn.Module) -> Iterator[tuple[str, BayesianLinear]]:
    """``(name, layer)`` for every :class:`BayesianLinear` inside `module`."""
    for name, sub in module.named_modules():
        if isinstance(sub, BayesianLinear):
            yield name, sub


def sigma_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The sigma Parameters of `module`'s Bayesian layers (e.g. for an optimiser group without weight decay)."""
    return [layer._sigma_param() for _, layer in bayesian_layers(module)]


_CONVERTIBLE = ("Linear", "LoRACompatibleLinear")


def _in_blocks(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _select(unet: nn.Module, selection: str, cfg: BayesianConfig) -> list[str]:
    """Names of the nn.Linear modules `selection` picks (not yet Bayesian ones excluded)."""
    prefixes = parse_blocks(cfg.blocks)
    chosen = []
    for name, module in unet.named_modules():
        # Plain Linear layers only (and diffusers' older LoRACompatibleLinear): not already Bayesian ones, and
        # not quantised subclasses (bitsandbytes' Linear8bitLt...) whose weight is not a float matrix.
        if type(module).__name__ not in _CONVERTIBLE or not isinstance(module, nn.Linear):
            continue
        if not _in_blocks(name, prefixes):
            continue
        parts = name.split(".")
        in_lora = any(p.startswith("lora_") for p in parts)
        if selection == "lora_up":
            # peft: <layer>.lora_B.<adapter_name>; lora_A stays deterministic (the reference's `down`).
            if len(parts) >= 2 and parts[-2] == "lora_B":
                chosen.append(name)
            continue
        if in_lora:
            continue  # never make an adapter's matrices Bayesian under a non-LoRA selection
        if "attn2" in parts and not cfg.include_cross_attention:
            continue
        in_transformer = "transformer_blocks" in parts
        is_attn = in_transformer and ("attn1" in parts or "attn2" in parts)
        is_ff = in_transformer and "ff" in parts
        if selection == "attn_ff" and (is_attn or is_ff):
            chosen.append(name)
        elif selection == "attn" and is_attn:
            chosen.append(name)
        elif selection == "ff" and is_ff:
            chosen.append(name)
        elif selection == "all_linear" and "time_emb_proj" not in parts:
            chosen.append(name)
    return chosen


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    parent._modules[child] = module  # ModuleDict / Sequential / attribute children all live in _modules


def make_bayesian(unet: nn.Module, cfg: BayesianConfig, method: str) -> list[str]:
    """Replace the layers `cfg` selects in `unet` by :class:`BayesianLinear`; return their names.

    Call it after LoRA adapters are attached (``unet.add_adapter``) and before the optimiser is built, so the
    new sigma Parameters (``requires_grad=True``) reach it. mu starts at the existing weight: pretrained for
    ``dreambooth``/``full``, peft's init (B = 0) for ``lora``; the prior is centred on a frozen copy of the
    pretrained weight (DreamBooth/full) or on 0 (LoRA), with sigma ``cfg.prior_sigma``. Nothing happens (and
    ``[]`` is returned) when ``cfg.enabled`` is false.

    Raises:
        InvalidArgumentError: unknown `method`, a selection that does not fit it, or no layer selected.
    """
    if method not in METHODS:
        raise InvalidArgumentError(f"`method` must be one of {', '.join(METHODS)}, but is {method!r}.")
    if not cfg.enabled:
        return []
    selection = cfg.resolved_layers(method)
    if method == "lora" and selection != "lora_up":
        raise InvalidArgumentError(
            f"with --method lora only the LoRA up matrices can be Bayesian (--bayes_layers auto or lora_up), "
            f"not {selection!r}: the base layers are frozen."
        )
    if method != "lora" and selection == "lora_up":
        raise InvalidArgumentError(f"`--bayes_layers lora_up` needs --method lora, but the method is {method!r}.")
    names = _select(unet, selection, cfg)
    already = [name for name, _ in bayesian_layers(unet)]
    if not names and already:
        logger.info("make_bayesian: the UNet already has %d Bayesian layers; nothing to convert.", len(already))
        return already
    if not names:
        where = "LoRA up (lora_B) matrices" if selection == "lora_up" else f"{selection} Linear layers"
        raise InvalidArgumentError(
            f"--bayesian selected no layer: the UNet has no {where} in blocks {','.join(cfg.blocks)}"
            + (" (attach the LoRA adapter before calling make_bayesian)." if selection == "lora_up" else ".")
        )
    prior = "zero" if selection == "lora_up" else "weights"
    n_weights = 0
    for name in names:
        linear = unet.get_submodule(name)
        layer = BayesianLinear.from_linear(
            linear,
            init_sigma=cfg.init_sigma,
            prior_sigma=cfg.prior_sigma,
            min_sigma=cfg.min_sigma,
            max_sigma=cfg.max_sigma,
            prior=prior,
        )
        _set_submodule(unet, name, layer)
        n_weights += layer.weight.numel()
    total = sum(p.numel() for p in unet.parameters())
    logger.info(
        "Bayesian fine-tuning: %d %s layers, %d weights with learnable sigma (init %g, bounds [%g, %g]); prior "
        "N(%s, %g^2); KL weight %g, %s, normalised by %s.",
        len(names), selection, n_weights, cfg.init_sigma, cfg.min_sigma, cfg.max_sigma,
        "0" if prior == "zero" else "pretrained", cfg.prior_sigma, cfg.kl_weight, cfg.kl_direction,
        cfg.kl_normalization,
    )
    logger.debug("Bayesian layers (%d of %d parameters incl. sigma): %s", n_weights, total, names)
    return names


def bayesian_loss(unet: nn.Module, cfg: BayesianConfig, num_examples: int) -> torch.Tensor:
    """``cfg.kl_weight * KL`` over the Bayesian layers, normalised per ``cfg.kl_normalization``; 0-dim fp32.

    KL is the closed-form Gaussian KL summed over every Bayesian weight, in ``cfg.kl_direction``. With the
    default normalisation ``examples`` it is divided by `num_examples` (the size of the training set, class
    images included under prior preservation), which makes ``diffusion_loss + bayesian_loss`` the per-example
    negative ELBO; ``weights`` divides by the number of Bayesian weights; ``none`` is the reference's
    unnormalised ``lambda1 * KL``. Returns a zero scalar when Bayesian training is off or the weight is 0 (so
    the default costs nothing).
    """
    layers = [layer for _, layer in bayesian_layers(unet)]
    device = next((p.device for p in unet.parameters()), torch.device("cpu"))
    if not cfg.enabled or cfg.kl_weight == 0 or not layers:
        return torch.zeros((), device=device)
    if cfg.kl_normalization == "examples":
        if int(num_examples) < 1:
            raise InvalidArgumentError(f"`num_examples` must be a positive integer, but is {num_examples!r}.")
        scale = 1.0 / int(num_examples)
    elif cfg.kl_normalization == "weights":
        scale = 1.0 / sum(layer.weight.numel() for layer in layers)
    else:
        scale = 1.0
    kl = torch.stack([layer.kl(cfg.kl_direction).to(device) for layer in layers]).sum()
    return kl * (cfg.kl_weight * scale)


def sigma_stats(unet: nn.Module) -> dict[str, float]:
    """Mean / min / max of sigma over the Bayesian layers (for logging); empty when there are none."""
    sigmas = [layer.clamped_sigma().detach().float().flatten() for _, layer in bayesian_layers(unet)]
    if not sigmas:
        return {}
    flat = torch.cat(sigmas)
    return {"sigma_mean": float(flat.mean()), "sigma_min": float(flat.min()), "sigma_max": float(flat.max())}


@contextlib.contextmanager
def deterministic_state(unet: nn.Module) -> Iterator[nn.Module]:
    """Inside, every Bayesian layer behaves and serialises as a plain ``nn.Linear`` with its mean weight.

    Forward passes use mu whatever the training mode; sigma and the prior buffer are hidden from
    ``state_dict()``, ``named_parameters()`` and ``named_buffers()``, so ``get_peft_model_state_dict``,
    ``save_pretrained`` and ``save_lora_weights`` write exactly the keys of an ordinary model. Everything is
    restored on exit, also when the body raises. Nests.
    """
    changed: list[tuple[BayesianLinear, nn.Parameter | None, torch.Tensor | None]] = []
    try:
        for _, layer in bayesian_layers(unet):
            layer._force_mean += 1
            sigma = layer._parameters.pop("sigma", None)  # None when an enclosing context hid it already
            # Only a real prior tensor is hidden; a None slot (zero prior) shows in no listing anyway.
            prior = layer._buffers.pop("prior_mean") if layer._buffers.get("prior_mean") is not None else None
            if sigma is not None:
                object.__setattr__(layer, "_stashed_sigma", sigma)
            changed.append((layer, sigma, prior))
        yield unet
    finally:
        for layer, sigma, prior in reversed(changed):
            if sigma is not None:
                layer._parameters["sigma"] = sigma
                object.__setattr__(layer, "_stashed_sigma", None)
            if prior is not None:
                layer._buffers["prior_mean"] = prior
            layer._force_mean -= 1


def strip_bayesian(unet: nn.Module) -> list[str]:
    """Permanently replace every Bayesian layer by a plain ``nn.Linear`` with its mean; return their names."""
    names = []
    for name, layer in list(bayesian_layers(unet)):
        _set_submodule(unet, name, layer.to_linear())
        _LIVE_LAYERS.discard(layer)
        names.append(name)
    return names


__all__ = [
    "BayesianConfig",
    "BayesianLinear",
    "add_bayesian_args",
    "bayesian_layers",
    "bayesian_loss",
    "deterministic_state",
    "gaussian_kl",
    "make_bayesian",
    "sigma_parameters",
    "sigma_stats",
    "strip_bayesian",
]
