"""The feature space CGI-DM compares a recovery to its original in, and the two ways it scores an image.

Revelio embeds with CLIP ViT-B/32 (and DINO), L2-normalises, and scores each source image by the **max**
cosine over all recovered images of its split. We do that, and also the **paired** cosine (a recovery
against its own original), which does not let one image's recovery vouch for another.

Feature spaces, in order of preference:

- ``"clip"``: open_clip image embeddings, when the weights are already on this machine
  (:func:`artshield.models.clip.load_clip`; nothing is downloaded).
- ``"dct"``: the weight-free low-frequency DCT descriptor of a colour thumbnail
  (:class:`artshield.finetune.memorization.near_duplicates.DCTDescriptor`, the near-duplicate descriptor of
  the memorization room). It was chosen over the demo style metric's handcrafted features because those are
  *global statistics* built to be the same for every image of a style — they cannot tell two images of one
  artist apart, which is exactly what membership needs — while the DCT thumbnail keeps the layout and
  colours of one image (copies score near 1, other images of the same style far lower). It is not robust to
  crops or flips, which CGI-DM's recoveries do not introduce.

Every report says which space was used and, for DCT, why CLIP was not.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from ..errors import InvalidArgumentError

logger = logging.getLogger(__name__)

FEATURE_SPACES = ("auto", "clip", "dct")


class FeatureSpace:
    """``FeatureSpace(kind="auto")``: CLIP when its weights are local, else DCT.

    Attributes:
        name: ``"clip"`` or ``"dct"``. note: one sentence for the report (what was used, and why).
    """

    def __init__(self, kind: str = "auto", *, device: torch.device | str = "cpu") -> None:
        if kind not in FEATURE_SPACES:
            raise InvalidArgumentError(f"`features` must be one of {', '.join(FEATURE_SPACES)}, but is {kind!r}.")
        self._clip = None
        reason = None
        if kind in ("auto", "clip"):
            from ..models.clip import load_clip

            self._clip, reason = load_clip(device=device)
            if self._clip is None and kind == "clip":
                raise InvalidArgumentError(f"CLIP features were asked for but are not available: {reason}")
        if self._clip is not None:
            self.name = "clip"
            self.note = f"CLIP image embeddings ({self._clip.describe()})."
        else:
            from ..finetune.memorization.near_duplicates import DCTDescriptor

            self._dct = DCTDescriptor()
            self.name = "dct"
            self.note = (
                "weight-free DCT thumbnail descriptor (low-frequency 2-D DCT of a 32 px colour thumbnail); "
                f"CLIP was not used: {reason}" if reason else "weight-free DCT thumbnail descriptor."
            )
            if reason:
                logger.info("CGI-DM similarity in DCT space: %s", reason)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, D) L2-normalised embeddings of (B, 3, H, W) images in [0, 1]."""
        images = images.detach().float().clamp(0, 1)
        if self.name == "clip":
            out = self._clip.embed_images(images.to(self._clip.device)).float().cpu()
        else:
            out = self._dct(images.cpu()).float()
        return F.normalize(out.flatten(1), dim=1)


def paired_cosine(recovered: torch.Tensor, originals: torch.Tensor) -> torch.Tensor:
    """(B,) cosine of each recovery's embedding with its own original's (rows of L2-normalised embeddings)."""
    if recovered.shape != originals.shape:
        raise InvalidArgumentError(f"embeddings must have the same shape, but are {tuple(recovered.shape)} and {tuple(originals.shape)}.")
    return (recovered * originals).sum(dim=1)


def max_cosine(recovered: torch.Tensor, originals: torch.Tensor) -> torch.Tensor:
    """(B,) Revelio's score: for each original, the max cosine over all recovered images of the split."""
    if recovered.dim() != 2 or originals.dim() != 2 or recovered.shape[1] != originals.shape[1]:
        raise InvalidArgumentError("embeddings must be (N, D) and (M, D) with the same D.")
    return (originals @ recovered.T).max(dim=1).values
