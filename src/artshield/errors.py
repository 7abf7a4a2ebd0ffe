"""Errors a user can cause.

Every exception here means "the input was wrong", not "the program is broken": the message names the
input, says what was expected and what was received, and the command-line tools print it as one line
with a non-zero exit status and no traceback.
"""

from __future__ import annotations


class ArtshieldError(Exception):
    """Base class of every error caused by user input."""


class InvalidArgumentError(ArtshieldError, ValueError):
    """An argument is out of range or of the wrong kind (`name` must be X, but is Y)."""


class ImageReadError(ArtshieldError):
    """An input image is missing, unreadable, or of a kind artshield cannot protect."""


class OutputWriteError(ArtshieldError):
    """An output (image, report, folder, checkpoint) could not be written, or would replace an input."""


#: The name this error had when only images were written; kept so existing ``except`` clauses still work.
ImageWriteError = OutputWriteError


class MaskError(ArtshieldError):
    """A mask does not fit its image (size, channels or value range)."""


class ModelLoadError(ArtshieldError):
    """A model specification could not be turned into a model."""


class ModelNotFoundError(ModelLoadError):
    """The model is not on disk and cannot be downloaded (offline, or no such id)."""


class IncompatibleModelError(ModelLoadError):
    """The files exist but are not a Stable Diffusion 1.x/2.x checkpoint artshield can use."""


class UntrustedCheckpointError(ModelLoadError):
    """A pickle-based checkpoint was given without the explicit trust flag."""


class ObjectiveError(ArtshieldError):
    """An objective handed to the engine broke its contract (shape, finiteness, autograd graph)."""


class DependencyError(ArtshieldError):
    """Installed packages do not work together (e.g. a transformers release that needs a newer peft)."""
