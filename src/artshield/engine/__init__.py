"""The two engines every method stands on: :mod:`.perturb` (projected gradient steps on an input under a
budget) and :mod:`.invert` (optimise one or several tensors jointly to match a signal: gradient leakage,
CGI-DM). Both share budgets (:mod:`.budget`), step rules, schedules, gradient averaging, early stops and
progress (:mod:`.steps`) and transforms. Nothing here knows about diffusion models: objectives are plain
callables."""

from .budget import Budget, clip_to_bounds, norm_of, project, random_start
from .invert import InvertConfig, Inverter, InvertObjective, InvertResult, gradient_distance, total_variation
from .perturb import (
    Objective,
    PerturbConfig,
    Perturber,
    PerturbResult,
    check_objective_output,
    evaluate_objective,
)
from .steps import NonFiniteGuard, StepInfo, StepRule, step_size_at
from .transforms import (
    Compose,
    DiffJPEG,
    GaussianBlur,
    GaussianNoise,
    Identity,
    RandomChoice,
    RandomCrop,
    Resize,
    Transform,
    default_robust_transforms,
    parse_transforms,
)

__all__ = [
    "Budget",
    "Compose",
    "DiffJPEG",
    "GaussianBlur",
    "GaussianNoise",
    "Identity",
    "RandomChoice",
    "RandomCrop",
    "Resize",
    "default_robust_transforms",
    "parse_transforms",
    "InvertConfig",
    "InvertObjective",
    "InvertResult",
    "Inverter",
    "NonFiniteGuard",
    "Objective",
    "PerturbConfig",
    "PerturbResult",
    "Perturber",
    "StepInfo",
    "StepRule",
    "Transform",
    "check_objective_output",
    "clip_to_bounds",
    "evaluate_objective",
    "gradient_distance",
    "norm_of",
    "project",
    "random_start",
    "step_size_at",
    "total_variation",
]
