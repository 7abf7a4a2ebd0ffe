"""Authenticate: did a fine-tuned model learn an artist's images? (the auditor's room)

    >>> from artshield.authenticate import Auditor
    >>> result = Auditor("demo", lora="suspect/", prompt="a painting in sks style").audit(
    ...     "artist/", holdout="unpublished/", output="report/")

:mod:`.cgidm` (CGI-DM recovery on the inversion engine), :mod:`.features` (similarity space and scores),
:mod:`.auditor` (the API), :mod:`.report` (report.json / report.html), :mod:`.cli` (``artshield
authenticate``); :mod:`.pair` (two models, one set of shared weights), :mod:`.baselines` (loss, SecMI, PIA)
and :mod:`.calibration` (metrics with intervals, thresholds, the model-level test). Names are imported
lazily so that ``import artshield.authenticate`` loads nothing heavy.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Auditor": "auditor",
    "AuditResult": "auditor",
    "ImageResult": "auditor",
    "CGIDM": "cgidm",
    "CGIDMConfig": "cgidm",
    "Recovery": "cgidm",
    "latent_keep_mask": "cgidm",
    "FeatureSpace": "features",
    "write_report": "report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
