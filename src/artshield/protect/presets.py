"""Strength presets (no heavy imports: the ``protect`` command reads them to build its --help)."""

from __future__ import annotations

# Strength presets: (eps, steps). The step size keeps Mist/AdvDM's reference ratio of total travel to
# budget (1/255 per step x 100 steps for eps 16/255: steps * step_size = 6.25 * eps).
STRENGTHS: dict[str, tuple[float, int]] = {
    "low": (4 / 255, 50),
    "medium": (8 / 255, 100),
    "high": (16 / 255, 200),
}
TRAVEL_RATIO = 6.25


def preset_step_size(eps: float, steps: int) -> float:
    """The step size presets use: ``6.25 * eps / steps`` (AdvDM's 1/255 x 100 steps at eps 16/255)."""
    return TRAVEL_RATIO * eps / max(steps, 1)


__all__ = ["STRENGTHS", "TRAVEL_RATIO", "preset_step_size"]
