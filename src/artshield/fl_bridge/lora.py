"""Federated LoRA of a diffusion model on Flower, and what a curious server can get back from the updates.

Each client holds the artworks of one artist and, every round, loads the global LoRA weights, runs a few
:class:`~artshield.finetune.LocalTrainer` steps (the trainer's own denoising loss and AdamW) on its images and
replies with its LoRA weights. Only the LoRA arrays travel (a :class:`~.updates.ParameterLayout` over the
trainer's state dict, keys of ``pytorch_lora_weights.safetensors``); the server is a
:class:`~.strategy.RobustStrategy` (FedAvg by default) driven by Flower's ``Strategy.start`` on the in-process
:class:`~.grid.LocalGrid`::

    from artshield.models import load
    from artshield.fl_bridge.lora import LoraSettings, run_lora_federation, render_artworks

    model = load("demo", device="cpu", dtype="fp32")
    clients = [render_artworks(style, 4, size=64, seed=1) for style in ("ink", "neon")]
    result = run_lora_federation(model, clients, LoraSettings(rounds=3, local_steps=5))
    result.save(result.rounds, "global-lora/")           # loads with model.with_lora("global-lora/")

The server is *curious*: :class:`LoraFederationResult` keeps every client's update (what the server
receives; with client-side DP, after the noise) and every round's global weights, for the attacks of
:func:`reconstruct_from_update` (gradient matching on the diffusion loss, on the inversion engine) and for
the membership audit of ``examples/fl_lora_audit.py`` (authenticate's scores on pre-round vs post-round
models).

**User-level DP** (:class:`UserDP`): clip each client's LoRA delta to L2 norm ``clip`` and add Gaussian noise,
either on the server (DP-FedAvg: noise ``z·clip/n`` on the unweighted mean, protecting what the global model
reveals, not what the server itself sees) or on the client (local DP: noise ``z·clip`` on every update before
it is sent, the only placement that hides an update from the server). This small step lives here until
``fl_bridge.privacy`` (DP-FedAvg with an accountant) is merged; it should then use that module.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import InvalidArgumentError
from . import messages as M
from .defenses.base import Aggregate, AggregationRule, RoundUpdates
from .updates import ParameterLayout

logger = logging.getLogger(__name__)

PLACEMENTS = ("server", "client")
SIMULATIONS = ("adam", "sgd")  # how the server turns dummy gradients into a dummy update
LORA_FILE = "pytorch_lora_weights.safetensors"
DEFAULT_PROMPT = "a painting in sks style"


# ------------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class UserDP:
    """User-level DP on LoRA deltas: clip to L2 norm `clip`, Gaussian noise of std ``noise_multiplier·clip``
    (on the client, per update) or ``noise_multiplier·clip/n`` (on the server, on the mean of n clipped
    updates, as DP-FedAvg)."""

    clip: float
    noise_multiplier: float
    placement: str = "server"

    def __post_init__(self) -> None:
        if not (isinstance(self.clip, int | float) and math.isfinite(self.clip) and self.clip > 0):
            raise InvalidArgumentError(f"DP `clip` must be a finite number > 0, but is {self.clip!r}.")
        if not (isinstance(self.noise_multiplier, int | float) and math.isfinite(self.noise_multiplier)
                and self.noise_multiplier >= 0):  # fmt: skip
            raise InvalidArgumentError(f"DP `noise_multiplier` must be a finite number >= 0, but is {self.noise_multiplier!r}.")
        if self.placement not in PLACEMENTS:
            raise InvalidArgumentError(f"DP `placement` must be one of {', '.join(PLACEMENTS)}, but is {self.placement!r}.")

    def epsilon(self, rounds: int, delta: float) -> float | None:
        """(ε, `delta`) after `rounds` rounds with every client in every round (RDP accountant of
        dp-accounting, through `fl_bridge.privacy`; inf without noise)."""
        from .privacy import epsilon_spent

        return epsilon_spent(self.noise_multiplier, 1.0, int(rounds), delta)


@dataclass(frozen=True)
class LoraSettings:
    """One federated LoRA run: LocalTrainer's settings, the rounds, the server's rule and optional DP."""

    rounds: int = 3
    local_steps: int = 5
    rank: int = 4
    learning_rate: float = 1e-3
    batch_size: int = 4
    resolution: int = 64
    prompt: str = DEFAULT_PROMPT
    defense: str = "fedavg"
    dp: UserDP | None = None
    seed: int = 0
    record_draws: bool = False  # keep each client's timesteps and noise (the "server knows the seed" oracle)

    def __post_init__(self) -> None:
        for name in ("rounds", "local_steps", "rank", "batch_size", "resolution"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"`{name}` must be a positive integer, but is {value!r}.")
        if not (isinstance(self.learning_rate, int | float) and math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise InvalidArgumentError(f"`learning_rate` must be a finite number > 0, but is {self.learning_rate!r}.")
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise InvalidArgumentError("`prompt` must be a non-empty caption.")

    def trainer_options(self, seed: int) -> dict:
        return dict(rank=self.rank, learning_rate=self.learning_rate, batch_size=self.batch_size,
                    resolution=self.resolution, seed=seed)  # fmt: skip


# ------------------------------------------------------------------------------------------------ data
def render_artworks(style: str, count: int, *, size: int = 64, seed: int = 0) -> torch.Tensor:
    """`count` artworks of the demo world in `style` (subjects in turn), (count, 3, size, size) in [0, 1]."""
    from ..models.demo.world import make_dataset

    images, _, _ = make_dataset(count, [style], size=(size, size), seed=seed)
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


# ------------------------------------------------------------------------------------------------ DP
def clip_update(delta: torch.Tensor, clip: float) -> torch.Tensor:
    """`delta` scaled down to L2 norm `clip` when it is longer."""
    from .privacy import clip_deltas

    return clip_deltas(delta[None], clip)[0][0]


class DPFedAvg(AggregationRule):
    """DP-FedAvg (McMahan et al., ICLR 2018) around an inner rule: clip each delta to `clip`, aggregate the
    clipped deltas with equal weights (the fixed denominator), add N(0, (z·clip/n)²) to the result."""

    name = "dp-fedavg"

    def __init__(self, inner: AggregationRule, clip: float, noise_multiplier: float, *, seed: int = 0):
        UserDP(clip, noise_multiplier)  # the checks
        self.inner = inner
        self.clip = float(clip)
        self.noise_multiplier = float(noise_multiplier)
        self._generator = torch.Generator().manual_seed(int(seed))

    def aggregate(self, updates: RoundUpdates) -> Aggregate:
        from .privacy import clip_deltas

        deltas, norms = clip_deltas(updates.deltas, self.clip)
        clipped = RoundUpdates(deltas, torch.ones_like(updates.num_examples),
                               updates.global_vector, updates.server_round, updates.client_ids, updates.layout)
        inner = self.inner(clipped)
        std = self.noise_multiplier * self.clip / updates.num_clients
        noise = torch.randn(inner.delta.shape, generator=self._generator) * std
        metrics = {**inner.metrics, "dp-clipped": int((norms > self.clip).sum()), "dp-noise-std": std,
                   "dp-mean-norm": float(norms.mean())}
        return Aggregate(inner.delta + noise, inner.accepted, metrics)


# ------------------------------------------------------------------------------------------------ draws oracle
@dataclass
class Draws:
    """The random draws of one client's round, step by step (only for the "knows the seed" upper bound):
    `index` (S, B) which local image each batch slot held, `timesteps` (S, B), `noise` (S, B, C, h, w)."""

    index: torch.Tensor
    timesteps: torch.Tensor
    noise: torch.Tensor


@contextlib.contextmanager
def _recording(model, calls: list):
    """Record every ``model.add_noise(latents, noise, timesteps)`` call (the trainer calls it once a step)."""
    original = model.add_noise

    def add_noise(latents, noise, timesteps):
        calls.append((latents.detach().cpu(), noise.detach().cpu(), timesteps.detach().cpu()))
        return original(latents, noise, timesteps)

    model.add_noise = add_noise
    try:
        yield
    finally:
        del model.add_noise  # the class's method again


def _draws_from_calls(model, calls: list, images: torch.Tensor) -> Draws:
    with torch.no_grad():
        means = model.encode(images, mode="mean").cpu().flatten(1)
    index = torch.stack([torch.cdist(latents.flatten(1), means).argmin(dim=1) for latents, _, _ in calls])
    return Draws(index, torch.stack([t for _, _, t in calls]), torch.stack([n for _, n, _ in calls]))


# ------------------------------------------------------------------------------------------------ federation
@dataclass
class LoraFederationResult:
    """What a curious server holds after the run.

    Attributes:
        layout: the LoRA arrays (keys of ``pytorch_lora_weights.safetensors``).
        globals: the global vector after each round, ``globals[0]`` the initial one.
        updates: ``updates[r][pid]`` client `pid`'s delta of round r as the server received it.
        losses: ``losses[r][pid]`` the client's training loss per local step.
        draws: ``draws[(r, pid)]`` the client's random draws (with ``record_draws`` only).
        metrics: the strategy's metrics per round. seconds: wall time.
    """

    settings: LoraSettings
    layout: ParameterLayout
    globals: list[torch.Tensor]
    updates: dict[int, dict[int, torch.Tensor]]
    losses: dict[int, dict[int, list[float]]]
    draws: dict[tuple[int, int], Draws] = field(default_factory=dict)
    metrics: dict[int, dict] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def rounds(self) -> int:
        return len(self.globals) - 1

    def state_dict(self, server_round: int, vector: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The global LoRA after `server_round` (0 = initial) as a state dict, or `vector`'s."""
        vector = self.globals[server_round] if vector is None else vector
        return {name: value.clone() for name, value in self.layout.unflatten(vector).items()}

    def save(self, server_round: int, folder: str | os.PathLike, vector: torch.Tensor | None = None) -> Path:
        """Write the global LoRA after `server_round` (or `vector`) as ``folder/pytorch_lora_weights.safetensors``
        (``DiffusionModel.with_lora(folder)`` and ``pipe.load_lora_weights(folder)`` read it)."""
        return save_lora_state(self.state_dict(server_round, vector), folder)


def save_lora_state(state: dict[str, torch.Tensor], folder: str | os.PathLike) -> Path:
    """Write a LoRA state dict (diffusers' keys) as ``folder/pytorch_lora_weights.safetensors``, atomically."""
    from safetensors.torch import save

    from ..fileio import write_bytes_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = save({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()})
    return write_bytes_atomic(folder / LORA_FILE, data, what="LoRA weights")


class _LoraClients:
    """The ClientApp's state in this process: one LocalTrainer per partition, all on one shared model."""

    def __init__(self, model, datasets: Sequence[torch.Tensor], settings: LoraSettings):
        self.model = model
        self.images = [torch.as_tensor(d).float() for d in datasets]
        self.settings = settings
        self.trainers: dict[int, object] = {}
        self.data: dict[int, object] = {}
        self.layout: ParameterLayout | None = None
        self.draws: dict[tuple[int, int], Draws] = {}
        self.losses: dict[int, dict[int, list[float]]] = {}

    def trainer(self, pid: int):
        from ..finetune import LocalTrainer
        from .clients import derive_seed

        if pid not in self.trainers:
            seed = derive_seed(self.settings.seed, pid) % (2**31)
            self.trainers[pid] = trainer = LocalTrainer(self.model, **self.settings.trainer_options(seed))
            self.data[pid] = trainer.dataset(list(self.images[pid]), self.settings.prompt)
        return self.trainers[pid]

    def train(self, message, context):
        from .clients import generator_for

        pid = int(context.node_config[M.PARTITION_ID])
        if not 0 <= pid < len(self.images):
            raise ValueError(f"this app has {len(self.images)} clients, the node holds partition {pid}")
        arrays = message.content[M.ARRAYS]
        config = message.content[M.CONFIG] if M.CONFIG in message.content.config_records else {}
        server_round = int(config.get(M.SERVER_ROUND, 0))
        global_vector = M.arrays_to_vector(arrays, self.layout)
        trainer = self.trainer(pid)
        trainer.load_state_dict({k: v.clone() for k, v in self.layout.unflatten(global_vector).items()})
        calls: list = []
        with _recording(self.model, calls) if self.settings.record_draws else contextlib.nullcontext():
            result = trainer.train_steps(self.data[pid], self.settings.local_steps)
        self.losses.setdefault(server_round, {})[pid] = list(result.losses)
        if calls:
            self.draws[(server_round, pid)] = _draws_from_calls(self.model, calls, self.images[pid])
        delta = self.layout.flatten(result.state_dict) - global_vector
        dp = self.settings.dp
        if dp is not None and dp.placement == "client":
            generator = generator_for(self.settings.seed, server_round, pid, 0xD9)
            delta = clip_update(delta, dp.clip)
            delta = delta + torch.randn(delta.shape, generator=generator) * (dp.noise_multiplier * dp.clip)
        local = M.vector_to_arrays(global_vector + delta, self.layout, template=arrays)
        return M.train_reply(message, local, len(self.images[pid]), loss=sum(result.losses) / len(result.losses))


def initial_lora_state(model, settings: LoraSettings) -> dict[str, torch.Tensor]:
    """The initial global LoRA (peft's initialisation: A random, B zero), deterministic in ``settings.seed``:
    adds the adapters to `model` if it has none."""
    from ..finetune import LocalTrainer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        return LocalTrainer(model, **settings.trainer_options(settings.seed)).state_dict()


def run_lora_federation(model, datasets: Sequence[torch.Tensor], settings: LoraSettings | None = None, *,
                        initial_state: dict[str, torch.Tensor] | None = None,
                        progress: Callable[[int, dict], None] | None = None) -> LoraFederationResult:  # fmt: skip
    """Run federated LoRA: client i trains on ``datasets[i]`` ((N, 3, H, W) in [0, 1]); see the module docstring.

    `model` (a loaded :class:`~artshield.models.DiffusionModel`) gets LoRA adapters and is shared by every
    client in this process (each loads the global weights before it trains). `initial_state` (default:
    :func:`initial_lora_state`) is the round-0 global LoRA. `progress(round, metrics)` after every round.
    """
    from flwr.app import ConfigRecord, MetricRecord

    from .defenses.registry import make_defense
    from .grid import LocalGrid
    from .strategy import RobustStrategy

    settings = settings or LoraSettings()
    datasets = list(datasets)
    if not datasets:
        raise InvalidArgumentError("federated LoRA needs at least one client dataset.")
    for i, images in enumerate(datasets):
        if not (isinstance(images, torch.Tensor) and images.dim() == 4 and images.shape[1] == 3 and len(images)):
            raise InvalidArgumentError(f"client {i}'s images must be a non-empty (N, 3, H, W) tensor.")
    started = time.perf_counter()
    state = initial_state if initial_state is not None else initial_lora_state(model, settings)
    layout = ParameterLayout.from_arrays(state)
    clients = _LoraClients(model, datasets, settings)
    clients.layout = layout
    for pid in range(len(datasets)):
        clients.trainer(pid)  # adapters and datasets up front (and a mismatching model fails here)

    from flwr.clientapp import ClientApp

    app = ClientApp()
    app.train()(clients.train)
    grid = LocalGrid(app, len(datasets), seed=settings.seed)
    rule = make_defense(settings.defense)
    if settings.dp is not None and settings.dp.placement == "server":
        rule = DPFedAvg(rule, settings.dp.clip, settings.dp.noise_multiplier, seed=settings.seed)

    updates: dict[int, dict[int, torch.Tensor]] = {}
    globals_: list[torch.Tensor] = []

    class CuriousStrategy(RobustStrategy):
        """Keeps what the server receives (every client's delta), then aggregates as usual."""

        def aggregate_train(self, server_round, replies):
            replies = list(replies)
            seen = updates.setdefault(int(server_round), {})
            for reply in replies:
                if not reply.has_error() and M.ARRAYS in reply.content.array_records:
                    with contextlib.suppress(InvalidArgumentError):
                        vector = M.arrays_to_vector(reply.content[M.ARRAYS], layout)
                        seen[grid.partition_of(reply.metadata.src_node_id)] = vector - self.validator.global_vector
            return super().aggregate_train(server_round, replies)

    flower = logging.getLogger("flwr")
    level = flower.level
    flower.setLevel(logging.ERROR)  # FedAvg's banner and its warning that fraction_evaluate=0 skips evaluation
    try:
        strategy = CuriousStrategy(rule, layout, seed=settings.seed, fraction_train=1.0, fraction_evaluate=0.0,
                                   min_train_nodes=1, min_evaluate_nodes=0, min_available_nodes=len(datasets))

        def evaluate_fn(server_round: int, arrays) -> MetricRecord:
            globals_.append(M.arrays_to_vector(arrays, layout).clone())
            if server_round > 0 and progress is not None:
                progress(server_round, dict(strategy.round_metrics.get(server_round, {})))
            return MetricRecord({})

        strategy.start(grid=grid, initial_arrays=M.state_to_arrays(state), num_rounds=settings.rounds,
                       train_config=ConfigRecord({}), evaluate_fn=evaluate_fn)
    finally:
        flower.setLevel(level)
    return LoraFederationResult(settings=settings, layout=layout, globals=globals_, updates=updates,
                                losses=clients.losses, draws=clients.draws, metrics=dict(strategy.round_metrics),
                                seconds=time.perf_counter() - started)  # fmt: skip


# ------------------------------------------------------------------------------------------------ reconstruction
@dataclass
class LoraReconstruction:
    """Images a curious server rebuilt from one LoRA update: `images` (B, 3, H, W) in [0, 1], the `latents`
    it optimised, the matching loss per step, the final cosine similarity of the gradients, seconds."""

    images: torch.Tensor
    latents: torch.Tensor
    losses: list[float]
    final_loss: float
    seconds: float
    config: dict


def _param_delta(trainer, layout: ParameterLayout, global_vector: torch.Tensor, delta: torch.Tensor) -> list[torch.Tensor]:
    """The update in the trainer's parameter order (no key mapping: load after, read, load before, read)."""
    trainer.load_state_dict({k: v.clone() for k, v in layout.unflatten(global_vector + delta).items()})
    after = [p.detach().clone() for p in trainer.parameters()]
    trainer.load_state_dict({k: v.clone() for k, v in layout.unflatten(global_vector).items()})
    return [a - p.detach() for a, p in zip(after, trainer.parameters(), strict=True)]


def reconstruct_from_update(
    model, layout: ParameterLayout, global_vector: torch.Tensor, delta: torch.Tensor, *, num_images: int,
    settings: LoraSettings, draws: Draws | None = None, samples: int = 4, steps: int = 100, step_size: float = 0.05,
    tv: float = 0.0, simulate: str = "adam", seed: int = 0, init: torch.Tensor | None = None, progress=None,
) -> LoraReconstruction:  # fmt: skip
    """Rebuild a client's training images from its round update by gradient matching (Inverting Gradients'
    cosine distance, on :class:`artshield.engine.Inverter`), optimising `num_images` latents.

    The dummy "update" is the gradient of the trainer's diffusion loss with respect to the LoRA weights at
    the round's global weights, conditioned on ``settings.prompt`` (assumed known: the federation's caption);
    the target is ``-delta``. The client's timesteps and noise are unknown to the server, so by default
    the dummy gradient is an estimate of the *expected* gradient: `samples` server-drawn (t, noise) per
    latent, fixed for the run. With `draws` (the client's own draws, :class:`Draws`: the "server knows the
    seed" upper bound) the dummy update is the sum of the per-step gradients with exactly the client's
    timesteps, noise and batches, at the global weights (the FedAvg approximation of Geng et al.: no drift
    within the round, no Adam normalisation). `init` replaces the random start (e.g. the true latents, to
read the objective at the truth with ``steps=0``). The `model`'s adapters are left at the global weights.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ..engine import Inverter
    from ..engine.invert import gradient_distance, total_variation
    from ..finetune import LocalTrainer

    if simulate not in SIMULATIONS:
        raise InvalidArgumentError(f"`simulate` must be one of {', '.join(SIMULATIONS)}, but is {simulate!r}.")
    if not (isinstance(num_images, int) and num_images >= 1):
        raise InvalidArgumentError(f"`num_images` must be a positive integer, but is {num_images!r}.")
    if delta.shape != global_vector.shape or delta.shape != (layout.size,):
        raise InvalidArgumentError(f"`delta` must have shape ({layout.size},), but has {tuple(delta.shape)}.")
    trainer = LocalTrainer(model, **settings.trainer_options(seed))
    target = [-d for d in _param_delta(trainer, layout, global_vector, delta)]
    params = trainer.parameters()
    side = settings.resolution // model.vae_scale_factor
    shape = (num_images, model.latent_channels, side, side)
    generator = torch.Generator().manual_seed(int(seed))
    start = torch.randn(shape, generator=generator)
    if init is not None:
        if tuple(init.shape) != shape:
            raise InvalidArgumentError(f"`init` must have shape {shape}, but has {tuple(init.shape)}.")
        start = init.detach().float().cpu()
    if draws is None:
        t_fixed = torch.randint(0, model.num_train_timesteps, (samples, num_images), generator=generator)
        n_fixed = torch.randn((samples, *shape), generator=generator)
    elif int(draws.index.max()) >= num_images:
        raise InvalidArgumentError(f"the draws index image {int(draws.index.max())}, but `num_images` is {num_images}.")
    embeds = {}

    def embedding(batch: int) -> torch.Tensor:
        if batch not in embeds:
            embeds[batch] = model.embed_prompt(settings.prompt, batch_size=batch)
        return embeds[batch]

    def step_losses(latents: torch.Tensor) -> torch.Tensor:
        """The mean loss of each (pseudo-)step, (S,): the client's batches with `draws`, else one step per
        server sample over all latents."""
        if draws is None:
            batch = latents.unsqueeze(0).expand(samples, *shape).reshape(-1, *shape[1:])
            losses = model.training_loss(batch, embedding(batch.shape[0]), timesteps=t_fixed.reshape(-1),
                                         noise=n_fixed.reshape(-1, *shape[1:]))  # fmt: skip
            return losses.view(samples, num_images).mean(dim=1)
        steps_, size = draws.index.shape
        batch = latents[draws.index.reshape(-1)]
        losses = model.training_loss(batch, embedding(batch.shape[0]), timesteps=draws.timesteps.reshape(-1),
                                     noise=draws.noise.reshape(-1, *shape[1:]))  # fmt: skip
        return losses.view(steps_, size).mean(dim=1)

    def dummy_update(latents: torch.Tensor) -> list[torch.Tensor]:
        losses = step_losses(latents)
        if simulate == "sgd":
            return list(torch.autograd.grad(losses.sum(), params, create_graph=True))
        # AdamW as LocalTrainer runs it (clip to max_grad_norm, bias-corrected moments), at fixed weights
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        m = v = total = None
        for k in range(losses.shape[0]):
            grads = torch.autograd.grad(losses[k], params, create_graph=True)
            norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))
            coef = (trainer.max_grad_norm / (norm + 1e-6)).clamp(max=1.0)
            grads = [g * coef for g in grads]
            m = [(1 - beta1) * g for g in grads] if m is None else [beta1 * a + (1 - beta1) * g for a, g in zip(m, grads, strict=True)]
            v = [(1 - beta2) * g * g for g in grads] if v is None else [beta2 * a + (1 - beta2) * g * g for a, g in zip(v, grads, strict=True)]
            c1, c2 = 1 - beta1 ** (k + 1), 1 - beta2 ** (k + 1)
            step = [(a / c1) / ((b / c2 + 1e-30).sqrt() + eps) for a, b in zip(m, v, strict=True)]
            total = step if total is None else [t + s for t, s in zip(total, step, strict=True)]
        return total

    def objective(values, generator):
        latents = values["latents"]
        loss = gradient_distance(dummy_update(latents), target, "cosine")
        if tv:
            loss = loss + tv * total_variation(latents).mean()
        return loss

    objective.__name__ = "lora-gradient-matching"
    inverter = Inverter(steps=steps, step_size=step_size, step_rule="adam", schedule="cosine", keep_best=True,
                        seed=seed, progress=progress or False)  # fmt: skip
    with sdpa_kernel(SDPBackend.MATH):  # double backward through attention (the fused CPU kernel has none)
        result = inverter.run(objective, {"latents": start})
    latents = result.values["latents"]
    with torch.no_grad():
        images = model.decode(latents).cpu()
    for p in params:
        p.grad = None
    config = {"steps": steps, "step_size": step_size, "samples": samples, "tv": tv, "seed": seed,
              "known_draws": draws is not None, "simulate": simulate, "num_images": num_images, "prompt": settings.prompt}
    return LoraReconstruction(images, latents.cpu(), list(result.losses), float(result.final_loss), result.seconds,
                              config)  # fmt: skip


def match_images(originals: torch.Tensor, candidates: torch.Tensor) -> dict:
    """PSNR/SSIM of each original against its assigned candidate (Hungarian assignment on per-pair MSE):
    ``{"psnr", "ssim" (per original), "psnr_mean", "ssim_mean", "order"}``."""
    from scipy.optimize import linear_sum_assignment

    from ..metrics import finite_psnr, ssim

    a, b = originals.float().clamp(0, 1), candidates.float().clamp(0, 1)
    if a.shape[1:] != b.shape[1:]:
        b = torch.nn.functional.interpolate(b, size=a.shape[-2:], mode="bilinear", align_corners=False)
    cost = ((a[:, None] - b[None]) ** 2).flatten(2).mean(dim=2)
    rows, cols = linear_sum_assignment(cost.numpy())
    rows, order = rows.tolist(), [int(c) for c in cols]  # rows come sorted
    matched = b[order]
    psnr = finite_psnr(a[rows], matched).tolist()
    ssims = ssim(a[rows], matched).tolist()
    return {"psnr": psnr, "ssim": ssims, "psnr_mean": sum(psnr) / len(psnr), "ssim_mean": sum(ssims) / len(ssims),
            "order": order}


__all__ = [
    "DPFedAvg",
    "Draws",
    "LoraFederationResult",
    "LoraReconstruction",
    "LoraSettings",
    "UserDP",
    "clip_update",
    "initial_lora_state",
    "match_images",
    "reconstruct_from_update",
    "render_artworks",
    "run_lora_federation",
    "save_lora_state",
]
