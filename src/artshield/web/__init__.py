"""``artshield serve``: a local web page on the same protection code as the ``protect`` command.

An artist drops images, picks a strength (and, under "advanced", a method, a step count and a mask), watches
progress, compares before and after, and downloads the protected PNGs (byte for byte what the command writes)
or a zip of them with the report. The page is plain HTML, CSS and JavaScript shipped in the package (no CDN,
no analytics); the server is a small Starlette app (:mod:`.app`) with one worker thread (:mod:`.jobs`) that
runs jobs one at a time, because the GPU (or the CPU) is one device.

Needs the ``web`` extra: ``pip install "artshield[web]"`` (Starlette, uvicorn, python-multipart).
"""

from __future__ import annotations

__all__ = ["create_app"]


def create_app(*args, **kwargs):
    """The Starlette application (see :func:`artshield.web.app.create_app`)."""
    from .app import create_app as build

    return build(*args, **kwargs)
