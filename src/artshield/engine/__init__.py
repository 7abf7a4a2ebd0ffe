"""The two engines every method stands on: :mod:`.perturb` (projected gradient steps on an input under a
budget) and, later, :mod:`.invert` (optimise an input to match a signal). Both share budgets, step rules and
transforms. Nothing here knows about diffusion models: objectives are plain callables."""

from .budget import Budget, clip_to_bounds, norm_of, project, random_start
from .perturb import (
    Objective,
    PerturbConfig,
    Perturber,
    PerturbResult,
    StepInfo,
    Transform,
    check_objective_output,
    evaluate_objective,
)
from .steps import StepRule, step_size_at
from .transforms import (
    Compose,
    DiffJPEG,
    GaussianBlur,
    GaussianNoise,
    Identity,
    RandomChoice,
    RandomCrop,
    Resize,
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
    "norm_of",
    "project",
    "random_start",
    "step_size_at",
]
