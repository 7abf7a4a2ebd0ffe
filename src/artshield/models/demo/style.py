"""The style metric of the demo world: which of its named styles an image is painted in.

:class:`StyleMetric` is a fixed, differentiable feature extractor followed by a multinomial logistic
regression over the demo world's style names (:data:`artshield.models.demo.world.ALL_STYLES`: the seven
training styles plus the held-out artist style). The features are handcrafted global statistics, computed
for any image size:

* colour: means and spreads of RGB, luminance and two opponent channels, saturation, a soft luminance
  histogram and a soft hue histogram weighted by chroma;
* texture: gradient magnitudes and their sparsity at three scales, local and global orientation
  coherence of the structure tensor and how fast the local orientation turns (straight stripes vs
  swirls vs dots), band energies of a four-level Laplacian pyramid of luminance and chroma, and local
  standard deviations.

They are standardised with the training set's mean and spread and fed to the linear classifier, so
``artist_score`` (the probability of the artist style) is a smooth function of the pixels that later work
can also differentiate through.

What it is: a cheap, deterministic, offline classifier **of this procedural world only**, fitted by
:mod:`artshield.models.demo.train` on clean images and on images decoded by the demo VAE, used to measure
how much of the artist's style a mimic (e.g. a LoRA fine-tuned on the artist's images) reproduces, and
how much a protection spoils that. What it is not: a perceptual or learned style similarity, a measure of
artistic style on real paintings, or robust to adversaries that target it directly; on images outside
the demo world its probabilities are meaningless.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import InvalidArgumentError, ModelLoadError
from .saved import load_weights, read_config, save_folder, shipped_folder

FEATURE_VERSION = 1  # bump when the feature definitions change: saved metrics then refuse to load
WEIGHTS_FILE = "style_metric.safetensors"
MIN_SIDE = 16  # three halvings of the pyramid and 3x3 filters still leave a few pixels
_EPS = 1e-6

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0


def _as_images(images) -> torch.Tensor:
    """Accept float tensors (B, 3, H, W) in [0, 1], or uint8 arrays/tensors (N, H, W, 3) as the world makes."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or images.shape[-1] != 3:
            raise InvalidArgumentError(
                f"`images` as a numpy array must be uint8 (N, H, W, 3) or (H, W, 3), but is {images.dtype} "
                f"{images.shape}."
            )
        array = images[None] if images.ndim == 3 else images
        return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).float() / 255.0
    if not isinstance(images, torch.Tensor):
        raise InvalidArgumentError(f"`images` must be a tensor or a numpy array, but is {type(images).__name__}.")
    if images.dtype == torch.uint8:
        if images.dim() != 4 or images.shape[-1] != 3:
            raise InvalidArgumentError(f"`images` as a uint8 tensor must be (N, H, W, 3), but is {tuple(images.shape)}.")
        return images.permute(0, 3, 1, 2).float() / 255.0
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[1] != 3:
        raise InvalidArgumentError(f"`images` must be (B, 3, H, W) in [0, 1], but has shape {tuple(images.shape)}.")
    if min(images.shape[-2:]) < MIN_SIDE:
        raise InvalidArgumentError(
            f"`images` must be at least {MIN_SIDE} pixels on each side, but are {tuple(images.shape[-2:])}."
        )
    return images.float()


def _conv(channel: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve (B, 1, H, W) with a 2-D kernel, replicate padding (borders are not edges)."""
    pad = kernel.shape[-1] // 2
    padded = F.pad(channel, (pad, pad, pad, pad), mode="replicate")
    return F.conv2d(padded, kernel.to(channel)[None, None])


def _gradients(channel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _conv(channel, _SOBEL_X), _conv(channel, _SOBEL_X.T)


def _local_mean(x: torch.Tensor, size: int) -> torch.Tensor:
    return F.avg_pool2d(F.pad(x, (size // 2,) * 4, mode="replicate"), size, stride=1)


def _mean(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(dim=1)


def _std(x: torch.Tensor) -> torch.Tensor:
    flat = x.flatten(1)
    return (flat.var(dim=1, unbiased=False) + _EPS).sqrt()


def _log(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x + 1e-5)


def _feature_dict(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every feature of a batch, name -> (B,). The order is the feature vector's order."""
    x = images.clamp(0.0, 1.0)
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    lum = 0.299 * r + 0.587 * g + 0.114 * b
    rg = r - g
    by = 0.5 * (r + g) - b
    chroma = (rg.square() + by.square() + _EPS).sqrt()
    top, bottom = x.amax(dim=1, keepdim=True), x.amin(dim=1, keepdim=True)
    saturation = (top - bottom) / (top + 1e-3)
    out: dict[str, torch.Tensor] = {}

    # --- colour moments
    for name, channel in (("r", r), ("g", g), ("b", b), ("lum", lum), ("rg", rg), ("by", by), ("sat", saturation)):
        out[f"mean_{name}"] = _mean(channel)
        out[f"std_{name}"] = _std(channel)
    centred = lum - lum.mean(dim=(2, 3), keepdim=True)
    out["skew_lum"] = _mean(centred**3) / _std(lum) ** 3
    out["mean_chroma"] = _mean(chroma)
    out["frac_vivid"] = _mean(torch.sigmoid((chroma - 0.35) * 20.0))
    # Soft luminance histogram (Gaussian bins) and chroma-weighted soft hue histogram (8 directions in the
    # opponent plane; a power of the clipped cosine sharpens the bins, no atan2 so gradients stay finite).
    for k, centre in enumerate(np.linspace(0.0625, 0.9375, 8)):
        out[f"hist_lum_{k}"] = _mean(torch.exp(-0.5 * ((lum - float(centre)) / 0.07) ** 2))
    for k in range(8):
        phi = 2 * math.pi * k / 8
        cosine = (rg * math.cos(phi) + by * math.sin(phi)) / chroma
        out[f"hist_hue_{k}"] = _mean(F.relu(cosine) ** 4 * chroma)
    # Colour of the darkest and brightest parts (dark backgrounds with bright saturated lines, etc.).
    dark = torch.sigmoid((0.25 - lum) * 20.0)
    bright = torch.sigmoid((lum - 0.6) * 20.0)
    out["chroma_in_dark"] = _mean(dark * chroma) / (_mean(dark) + 1e-3)
    out["chroma_in_bright"] = _mean(bright * chroma) / (_mean(bright) + 1e-3)

    # --- gradients, structure tensor and orientation field at three scales
    for scale in (1, 2, 4):
        channel = lum if scale == 1 else F.avg_pool2d(lum, scale)
        gx, gy = _gradients(channel)
        energy = gx.square() + gy.square()
        magnitude = (energy + _EPS).sqrt()
        out[f"grad_mean_s{scale}"] = _log(_mean(magnitude))
        out[f"grad_rms_s{scale}"] = _log(_mean(energy)) * 0.5
        # Sparsity: thin crisp edges give a large ratio of mean energy^2 to mean energy squared.
        out[f"grad_kurt_s{scale}"] = _log(_mean(energy.square()) / (_mean(energy).square() + 1e-10))
        jxx, jyy, jxy = (_local_mean(t, 5) for t in (gx * gx, gy * gy, gx * gy))
        trace = jxx + jyy + 1e-6
        c2, s2 = (jxx - jyy) / trace, 2 * jxy / trace  # double-angle orientation, |.| = local coherence
        coherence = (c2.square() + s2.square() + _EPS).sqrt()
        weight = trace / (trace.mean(dim=(2, 3), keepdim=True))
        out[f"coherence_local_s{scale}"] = _mean(coherence * weight)
        gxx, gyy, gxy = jxx.mean(dim=(2, 3)), jyy.mean(dim=(2, 3)), jxy.mean(dim=(2, 3))
        out[f"coherence_global_s{scale}"] = (
            ((gxx - gyy).square() + 4 * gxy.square() + 1e-10).sqrt() / (gxx + gyy + 1e-6)
        ).flatten()
        # How fast the orientation turns: straight stripes ~0, swirls moderate, dots and noise large.
        turn = 0.0
        for field in (c2, s2):
            fx, fy = _gradients(field)
            turn = turn + fx.square() + fy.square()
        out[f"orientation_turn_s{scale}"] = _log(_mean(turn * weight))

    # --- chroma gradients (colour edges vs luminance-only edges)
    for scale in (1, 2):
        energy = 0.0
        for channel in (rg, by):
            c = channel if scale == 1 else F.avg_pool2d(channel, scale)
            gx, gy = _gradients(c)
            energy = energy + gx.square() + gy.square()
        out[f"chroma_grad_s{scale}"] = _log(_mean(energy)) * 0.5

    # --- Laplacian pyramid band energies of luminance and chroma
    lum_level, chroma_level = lum, torch.cat([rg, by], dim=1)
    for level in range(4):
        for name, level_img in (("lum", lum_level), ("chroma", chroma_level)):
            if min(level_img.shape[-2:]) < 2:
                band = torch.zeros_like(level_img)
            else:
                down = F.avg_pool2d(level_img, 2, ceil_mode=True)
                up = F.interpolate(down, size=level_img.shape[-2:], mode="bilinear", align_corners=False)
                band = level_img - up
            out[f"band_{name}_{level}"] = _log(_mean(band.square())) * 0.5
        if min(lum_level.shape[-2:]) >= 2:
            lum_level = F.avg_pool2d(lum_level, 2, ceil_mode=True)
            chroma_level = F.avg_pool2d(chroma_level, 2, ceil_mode=True)

    # --- local standard deviation (texture contrast) at two window sizes
    for size in (3, 9):
        variance = (_local_mean(lum.square(), size) - _local_mean(lum, size).square()).clamp_min(0.0)
        local_std = (variance + _EPS).sqrt()
        out[f"local_std_{size}"] = _mean(local_std)
        out[f"local_std_spread_{size}"] = _std(local_std)
    return out


def image_features(images) -> torch.Tensor:
    """The metric's raw feature vectors, (B, F), differentiable with respect to float `images`."""
    x = _as_images(images)
    feats = _feature_dict(x)
    return torch.stack(list(feats.values()), dim=1)


FEATURE_NAMES: tuple[str, ...] = tuple(_feature_dict(torch.full((1, 3, MIN_SIDE, MIN_SIDE), 0.5)).keys())


class StyleMetric(torch.nn.Module):
    """Probability of each demo-world style for an image: handcrafted features -> standardisation ->
    multinomial logistic regression. See the module docstring for what it can and cannot measure.

    Args:
        styles: the class names, in output order (the world's :data:`ALL_STYLES` when fitted by the trainer).
        artist: which of `styles` is the artist (what :meth:`artist_score` reports).
        info: free-form JSON-able facts about the fit (data, accuracy), saved alongside the weights.
    """

    def __init__(self, styles: Sequence[str], artist: str, info: dict | None = None) -> None:
        super().__init__()
        styles = tuple(styles)
        if len(styles) < 2 or len(set(styles)) != len(styles):
            raise InvalidArgumentError(f"`styles` must name at least two distinct styles, but is {styles!r}.")
        if artist not in styles:
            raise InvalidArgumentError(f"`artist` must be one of `styles` ({', '.join(styles)}), but is {artist!r}.")
        self.styles = styles
        self.artist = artist
        self.info = dict(info or {})
        n_features = len(FEATURE_NAMES)
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_std", torch.ones(n_features))
        self.register_buffer("weight", torch.zeros(len(styles), n_features))
        self.register_buffer("bias", torch.zeros(len(styles)))

    # ------------------------------------------------------------------ inference
    @property
    def artist_index(self) -> int:
        return self.styles.index(self.artist)

    def features(self, images) -> torch.Tensor:
        """Raw (unstandardised) features, (B, F); any image size of at least 16 px."""
        return image_features(images)

    def logits(self, images) -> torch.Tensor:
        return self._logits_from_features(self.features(images))

    def _logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        z = (features - self.feature_mean) / self.feature_std
        return z @ self.weight.T + self.bias

    def probabilities(self, images) -> torch.Tensor:
        """(B, n_styles) class probabilities, in the order of :attr:`styles`."""
        return self.logits(images).softmax(dim=1)

    def forward(self, images) -> torch.Tensor:
        return self.probabilities(images)

    def artist_score(self, images) -> torch.Tensor:
        """(B,) probability that each image is in the artist's style; differentiable."""
        return self.probabilities(images)[:, self.artist_index]

    def style_score(self, images, style: str) -> torch.Tensor:
        """(B,) probability of `style` for each image."""
        if style not in self.styles:
            raise InvalidArgumentError(f"`style` must be one of {', '.join(self.styles)}, but is {style!r}.")
        return self.probabilities(images)[:, self.styles.index(style)]

    @torch.no_grad()
    def predict(self, images, batch_size: int = 64) -> list[str]:
        """The most probable style name of each image."""
        x = _as_images(images)
        names: list[str] = []
        for start in range(0, x.shape[0], batch_size):
            index = self.logits(x[start : start + batch_size]).argmax(dim=1)
            names.extend(self.styles[i] for i in index.tolist())
        return names

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        images,
        labels: Sequence[str],
        *,
        styles: Sequence[str] | None = None,
        artist: str | None = None,
        l2: float = 1e-3,
        max_iter: int = 300,
        batch_size: int = 64,
        seed: int = 0,
    ) -> StyleMetric:
        """Fit the standardisation and the logistic regression on `images` with style-name `labels`.

        Full-batch L-BFGS on the mean cross-entropy plus ``l2 * ||W||^2``, from zero weights, so the result
        is deterministic (`seed` fixes torch's RNG for completeness). `styles` defaults to the world's
        :data:`ALL_STYLES` and `artist` to its :data:`ARTIST_STYLE`.
        """
        from .world import ALL_STYLES, ARTIST_STYLE

        styles = tuple(styles) if styles is not None else ALL_STYLES
        metric = cls(styles, artist if artist is not None else ARTIST_STYLE)
        x = _as_images(images)
        labels = list(labels)
        if len(labels) != x.shape[0]:
            raise InvalidArgumentError(f"`labels` has {len(labels)} entries but `images` holds {x.shape[0]} images.")
        unknown = sorted(set(labels) - set(styles))
        if unknown:
            raise InvalidArgumentError(f"`labels` contains styles not in `styles`: {', '.join(unknown)}.")
        torch.manual_seed(seed)
        with torch.no_grad():
            feats = torch.cat([image_features(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])
        target = torch.tensor([styles.index(label) for label in labels])
        mean, std = feats.mean(dim=0), feats.std(dim=0, unbiased=False).clamp_min(1e-4)
        z = ((feats - mean) / std).double()
        weight = torch.zeros(len(styles), z.shape[1], dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(len(styles), dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe",
                                      tolerance_grad=1e-9, tolerance_change=1e-12)

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(z @ weight.T + bias, target) + l2 * weight.square().sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        with torch.no_grad():
            logits = z @ weight.T + bias
            loss = float(F.cross_entropy(logits, target))
            accuracy = float((logits.argmax(dim=1) == target).double().mean())
        metric.feature_mean.copy_(mean)
        metric.feature_std.copy_(std)
        metric.weight.copy_(weight.detach().float())
        metric.bias.copy_(bias.detach().float())
        metric.info = {"n_images": int(x.shape[0]), "l2": l2, "train_cross_entropy": loss, "train_accuracy": accuracy}
        return metric

    # ------------------------------------------------------------------ persistence
    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``style_metric.safetensors`` (tensors) and ``config.json`` (names, version, fit info)."""
        config = {"feature_version": FEATURE_VERSION, "styles": list(self.styles), "artist": self.artist,
                  "feature_names": list(FEATURE_NAMES), "info": self.info}  # fmt: skip
        return save_folder(self, folder, WEIGHTS_FILE, config)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> StyleMetric:
        """Load a metric saved by :meth:`save` (safetensors + JSON; nothing is unpickled)."""
        config = read_config(folder, WEIGHTS_FILE, "style metric")
        if config.get("feature_version") != FEATURE_VERSION or config.get("feature_names") != list(FEATURE_NAMES):
            raise ModelLoadError(
                f"style metric folder {folder} was fitted on features version {config.get('feature_version')!r}; "
                f"this artshield computes version {FEATURE_VERSION}. Refit it (python -m artshield.models.demo.train)."
            )
        return load_weights(cls(config["styles"], config["artist"], config.get("info")), folder, WEIGHTS_FILE, "style metric")

    @classmethod
    def load_default(cls) -> StyleMetric:
        """The metric shipped with the demo model (``DEMO_WEIGHTS / "style_metric"``)."""
        return cls.load(shipped_folder("style_metric", "style metric", "run `python -m artshield.models.demo.train "
                                       "--output-dir <folder>` and load `<folder>/style_metric`"))


__all__ = ["FEATURE_NAMES", "StyleMetric", "image_features"]
