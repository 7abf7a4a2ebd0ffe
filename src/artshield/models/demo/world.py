"""The demo model's procedural world: simple subjects painted in named styles, deterministic from a seed.

The demo model (:mod:`artshield.models.demo.train`) learns this world from captions such as
``"a tree in pointillism style"``. Seven *training* styles (:data:`STYLES`) are in its training set; one
more, :data:`ARTIST_STYLE`, is held out and plays "the artist" whose style a mimic would LoRA-fine-tune
on. Every style differs from the others in colour *and* texture statistics (dots, straight stripes, soft
washes, tiles with grout, ink hatching, glow on black, pixel blocks, swirling strokes), and every subject
(:data:`SUBJECTS`) stays recognisable in every style, so a caption means something.

Everything is pure numpy plus Pillow-free linear algebra, deterministic for a given ``seed`` whatever the
platform, and renders at any size and aspect ratio (shapes scale with the shorter side).

    >>> from artshield.models.demo.world import render, caption
    >>> image = render("velmora", "tree", size=(160, 224), seed=3)   # uint8, 160 x 224 x 3
    >>> caption("velmora", "tree")
    'a tree in velmora style'

What this world can and cannot show: it is a controlled test bed in which "style" is a small set of
colour and texture statistics that a 6M-parameter model can learn in minutes on a CPU. Results on it show
that code paths work and how methods rank *on this world*; they say nothing about how a protection fares
against a real Stable Diffusion checkpoint on real paintings.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

from ...errors import InvalidArgumentError

STYLES: tuple[str, ...] = ("pointillism", "opart", "watercolor", "mosaic", "ink", "neon", "pixelart")
"""Styles in the demo model's training set."""

ARTIST_STYLE: str = "velmora"
"""The held-out "artist" style: swirling contour-following strokes, indigo/teal sky and warm subjects."""

ALL_STYLES: tuple[str, ...] = (*STYLES, ARTIST_STYLE)
"""Every style of the world, training styles first; the style metric classifies over these."""

SUBJECTS: tuple[str, ...] = ("circle", "square", "triangle", "house", "tree", "star")
"""Content shapes; each appears (filled, outlined or patterned) in every style."""

STYLE_DESCRIPTIONS: dict[str, str] = {
    "pointillism": "dense round colour dots on cream canvas, complementary subject and background hues",
    "opart": "bold straight stripes, black/white background and perpendicular coloured stripes in the subject",
    "watercolor": "soft pastel washes with wobbly darkened edges on white paper",
    "mosaic": "square tiles of jittered flat colour separated by grey grout lines",
    "ink": "black ink outline and diagonal hatching on off-white paper",
    "neon": "glowing saturated outline on a near-black background",
    "pixelart": "big flat pixel blocks, dithered sky, ground band and dark outlines",
    "velmora": "swirling spiral strokes in indigo and teal, warm orange/gold subject strokes following its outline",
}


# ----------------------------------------------------------------------------------- validation
def _check_style(style: str) -> None:
    if style not in ALL_STYLES:
        raise InvalidArgumentError(f"`style` must be one of {', '.join(ALL_STYLES)}, but is {style!r}.")


def _check_subject(subject: str) -> None:
    if subject not in SUBJECTS:
        raise InvalidArgumentError(f"`subject` must be one of {', '.join(SUBJECTS)}, but is {subject!r}.")


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"`size` must be (height, width), but is {size!r}.") from exc
    if height < 8 or width < 8:
        raise InvalidArgumentError(f"`size` must be at least (8, 8), but is {size!r}.")
    return height, width


def caption(style: str, subject: str) -> str:
    """The training caption of `subject` painted in `style`, e.g. ``"a tree in pointillism style"``."""
    _check_style(style)
    _check_subject(subject)
    return f"a {subject} in {style} style"


# ----------------------------------------------------------------------------------- helpers
def _hsv(h: float | np.ndarray, s: float | np.ndarray, v: float | np.ndarray) -> np.ndarray:
    """HSV (all in [0, 1], hue wraps) to RGB; broadcasts and returns (..., 3) float."""
    h = np.mod(np.asarray(h, dtype=np.float64), 1.0)
    s = np.clip(np.asarray(s, dtype=np.float64), 0.0, 1.0)
    v = np.clip(np.asarray(v, dtype=np.float64), 0.0, 1.0)
    h, s, v = np.broadcast_arrays(h, s, v)
    k = np.stack([(5.0 + h * 6.0) % 6.0, (3.0 + h * 6.0) % 6.0, (1.0 + h * 6.0) % 6.0], axis=-1)
    return v[..., None] - v[..., None] * s[..., None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _gauss_matrix(n: int, sigma: float) -> np.ndarray:
    """Row-normalised Gaussian blur matrix (rows renormalised at the borders, so no dark edges)."""
    idx = np.arange(n)
    kernel = np.exp(-0.5 * ((idx[:, None] - idx[None, :]) / max(sigma, 1e-6)) ** 2)
    return kernel / kernel.sum(axis=1, keepdims=True)


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an (H, W) or (H, W, C) array by dense matrix products (any size, exact)."""
    if sigma <= 0:
        return image
    rows, cols = _gauss_matrix(image.shape[0], sigma), _gauss_matrix(image.shape[1], sigma)
    if image.ndim == 2:
        return rows @ image @ cols.T
    return np.einsum("ij,jkc,lk->ilc", rows, image, cols)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: float) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a random grid of `cells` per shorter side, bilinearly upsampled."""
    short = min(height, width)
    gh = max(2, int(round(cells * height / short)) + 2)
    gw = max(2, int(round(cells * width / short)) + 2)
    grid = rng.uniform(-1.0, 1.0, size=(gh, gw))
    y = np.linspace(0.5, gh - 1.5, height)
    x = np.linspace(0.5, gw - 1.5, width)
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    # Smoothstep weights hide the grid's kinks.
    fy, fx = fy * fy * (3 - 2 * fy), fx * fx * (3 - 2 * fx)
    g00, g01 = grid[np.ix_(y0, x0)], grid[np.ix_(y0, x0 + 1)]
    g10, g11 = grid[np.ix_(y0 + 1, x0)], grid[np.ix_(y0 + 1, x0 + 1)]
    return (g00 * (1 - fx) + g01 * fx) * (1 - fy) + (g10 * (1 - fx) + g11 * fx) * fy


def _coverage(sdf_px: np.ndarray) -> np.ndarray:
    """Antialiased inside-coverage in [0, 1] from a signed distance in pixels (negative inside)."""
    return np.clip(0.5 - sdf_px, 0.0, 1.0)


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    return a + (b - a) * t[..., None]


# ----------------------------------------------------------------------------------- subjects
def _sd_box(u: np.ndarray, v: np.ndarray, cu: float, cv: float, hu: float, hv: float) -> np.ndarray:
    qu, qv = np.abs(u - cu) - hu, np.abs(v - cv) - hv
    outside = np.hypot(np.maximum(qu, 0.0), np.maximum(qv, 0.0))
    return outside + np.minimum(np.maximum(qu, qv), 0.0)


def _sd_triangle(u: np.ndarray, v: np.ndarray, cu: float, cv: float, r: float) -> np.ndarray:
    """Equilateral triangle pointing up (Inigo Quilez's exact SDF; v grows downwards)."""
    k = np.sqrt(3.0)
    px, py = np.abs(u - cu) - r, -(v - cv) + r / k
    flip = px + k * py > 0
    px, py = np.where(flip, (px - k * py) / 2.0, px), np.where(flip, (-k * px - py) / 2.0, py)
    px = px - np.clip(px, -2.0 * r, 0.0)
    return -np.hypot(px, py) * np.sign(py)


def _subject_sdf(subject: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Signed distance (pixels, negative inside) of `subject`, centred with jitter, scaled to the short side."""
    short = min(height, width)
    radius = short * rng.uniform(0.28, 0.35)
    cx = width / 2 + rng.uniform(-0.07, 0.07) * short
    cy = height / 2 + rng.uniform(-0.06, 0.06) * short
    angle = rng.uniform(-0.15, 0.15) if subject in ("square", "star", "triangle") else 0.0
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    du, dv = (xx - cx) / radius, (yy - cy) / radius
    u = np.cos(angle) * du + np.sin(angle) * dv
    v = -np.sin(angle) * du + np.cos(angle) * dv
    if subject == "circle":
        d = np.hypot(u, v) - 1.0
    elif subject == "square":
        d = _sd_box(u, v, 0.0, 0.0, 0.82, 0.82)
    elif subject == "triangle":
        d = _sd_triangle(u, v, 0.0, 0.2, 0.98)
    elif subject == "house":
        body = _sd_box(u, v, 0.0, 0.38, 0.72, 0.55)
        roof = _sd_triangle(u, v, 0.0, -0.3, 0.95)
        door = _sd_box(u, v, 0.0, 0.66, 0.18, 0.28)
        d = np.maximum(np.minimum(body, roof), -door)
    elif subject == "tree":
        canopy = np.hypot(u, v + 0.3) - 0.68
        trunk = _sd_box(u, v, 0.0, 0.62, 0.15, 0.38)
        d = np.minimum(canopy, trunk)
    elif subject == "star":
        rho, theta = np.hypot(u, v), np.arctan2(u, -v)  # theta = 0 points up
        t = np.abs(np.mod(theta * 5.0 / (2 * np.pi), 1.0) - 0.5) * 2.0  # 1 at tips, 0 between
        d = (rho - (0.45 + 0.6 * t**1.5)) * 0.8
    else:  # pragma: no cover - _check_subject ran first
        raise AssertionError(subject)
    return d * radius


# ----------------------------------------------------------------------------------- styles
# Each painter takes the subject's signed distance (pixels), the short side and a generator, and
# returns float RGB in [0, 1]. Sizes of texture elements scale with the short side so that a 224 px
# painting looks like a 128 px one, only sharper.
Painter = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]


def _paint_pointillism(sdf: np.ndarray, short: int, rng: np.random.Generator) -> np.ndarray:
    height, width = sdf.shape
    hue_fg = rng.uniform()
    hue_bg = hue_fg + rng.uniform(0.35, 0.65)
    canvas = np.empty((height, width, 3))
    canvas[:] = (0.96, 0.93, 0.84)
    inside = _coverage(sdf)
    radius = max(1.2, short * 0.021)
    spacing = radius * 2.1
    # Two offset jittered grids of dots; each dot takes the colour under its centre plus jitter.
    for layer in range(2):
        offset = layer * spacing / 2
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
        cell_y = np.floor((yy + offset) / spacing).astype(int)
        cell_x = np.floor((xx + offset) / spacing).astype(int)
        ny, nx = cell_y.max() + 1, cell_x.max() + 1
        jitter = rng.uniform(-0.22, 0.22, size=(2, ny, nx)) * spacing
        centre_y = (np.arange(ny)[:, None] + 0.5) * spacing - offset + jitter[0]
        centre_x = (np.arange(nx)[None, :] + 0.5) * spacing - offset + jitter[1]
        cy = np.clip(centre_y, 0, height - 1).astype(int)
        cx = np.clip(centre_x, 0, width - 1).astype(int)
        dot_in = inside[cy, cx]
        hue = np.where(dot_in > 0.5, hue_fg, hue_bg) + rng.normal(0, 0.05, size=(ny, nx))
        sat = np.where(dot_in > 0.5, 0.85, 0.55) + rng.normal(0, 0.08, size=(ny, nx))
        val = np.where(dot_in > 0.5, 0.8, 0.9) + rng.normal(0, 0.08, size=(ny, nx))
        colours = _hsv(hue, sat, val)
        dist = np.hypot(yy - centre_y[cell_y, cell_x], xx - centre_x[cell_y, cell_x])
        alpha = np.clip(radius - dist + 0.5, 0.0, 1.0)
        canvas = _lerp(canvas, colours[cell_y, cell_x], alpha)
    return canvas


def _paint_opart(sdf: np.ndarray, short: int, rng: np.random.Generator) -> np.ndarray:
    height, width = sdf.shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    period = short * rng.uniform(0.075, 0.095)
    angle = rng.uniform(0, np.pi)

    def stripes(theta: float) -> np.ndarray:
        phase = (xx * np.cos(theta) + yy * np.sin(theta)) / period
        # A steep tanh of a sine is a crisp but antialiased square wave.
        return 0.5 + 0.5 * np.tanh(np.sin(2 * np.pi * phase) * period / 3.0)

    background = stripes(angle)[..., None] * np.array([0.95, 0.95, 0.95]) + 0.03
    colour = _hsv(rng.uniform(), rng.uniform(0.8, 1.0), rng.uniform(0.85, 1.0))
    dark = np.array([0.04, 0.04, 0.06])
    foreground = _lerp(np.broadcast_to(dark, sdf.shape + (3,)), np.broadcast_to(colour, sdf.shape + (3,)),
                       stripes(angle + np.pi / 2))
    return _lerp(background, foreground, _coverage(sdf))


def _paint_watercolor(sdf: np.ndarray, short: int, rng: np.random.Generator) -> np.ndarray:
    height, width = sdf.shape
    paper = np.array([0.97, 0.96, 0.92]) + rng.normal(0, 0.008, size=(height, width, 1))
    absorb = np.zeros((height, width, 3))  # subtractive pigment density
    # A few faint background washes.
    for _ in range(rng.integers(2, 4)):
        pigment = 1.0 - _hsv(rng.uniform(), rng.uniform(0.25, 0.45), 1.0)
        wash = np.clip(_smooth_noise(rng, height, width, 2.0) * 1.5 + 0.2, 0.0, 1.0) * rng.uniform(0.15, 0.3)
        absorb += wash[..., None] * pigment
    # The subject: a wobbly-edged pastel wash with pigment pooled at its edge.
    wobble = _smooth_noise(rng, height, width, 6.0) * short * 0.025
    d = sdf + wobble
    body = _blur(_coverage(d), short * 0.012)
    density = 0.55 + 0.25 * _smooth_noise(rng, height, width, 4.0)
    rim = np.exp(-0.5 * ((d + short * 0.015) / (short * 0.012)) ** 2) * 0.45
    pigment = 1.0 - _hsv(rng.uniform(), rng.uniform(0.45, 0.65), rng.uniform(0.85, 1.0))
    absorb += (body * density + rim * (body > 0.05))[..., None] * pigment
    return paper * np.exp(-1.6 * absorb)


def _paint_mosaic(sdf: np.ndarray, short: int, rng: np.random.Generator) -> np.ndarray:
    height, width = sdf.shape
    tile = short * rng.uniform(0.075, 0.09)
    grout = max(0.8, short * 0.012)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    off_y, off_x = rng.uniform(0, tile, size=2)
    ty, tx = np.floor((yy + off_y) / tile).astype(int), np.floor((xx + off_x) / tile).astype(int)
    ny, nx = ty.max() + 1, tx.max() + 1
    centre_y = np.clip(((np.arange(ny) + 0.5) * tile - off_y).astype(int), 0, height - 1)
    centre_x = np.clip(((np.arange(nx) + 0.5) * tile - off_x).astype(int), 0, width - 1)
    tile_in = _coverage(sdf)[np.ix_(centre_y, centre_x)] > 0.5
    # Subject tiles: bright and saturated, at least a third of the hue circle away from the dull background.
    hue_bg = rng.uniform()
    hue_fg = hue_bg + rng.uniform(0.33, 0.67)
    hue = np.where(tile_in, hue_fg, hue_bg) + rng.normal(0, 0.03, size=(ny, nx))
    sat = np.where(tile_in, 0.85, 0.35) + rng.normal(0, 0.08, size=(ny, nx))
    val = np.where(tile_in, 0.92, 0.62) + rng.normal(0, 0.08, size=(ny, nx))
    colours = _hsv(hue, sat, val)[ty, tx]
    # Distance to the nearest tile edge decides the grout.
    fy, fx = np.mod(yy + off_y, tile), np.mod(xx + off_x, tile)
    edge = np.minimum(np.minimum(fy, tile - fy), np.minimum(fx, tile - fx))
    grout_alpha = np.clip(grout / 2 - edge + 0.5, 0.0, 1.0)
    return _lerp(colours, np.broadcast_to(np.array([0.55, 0.53, 0.5]), colours.shape), grout_alpha)


def _paint_ink(sdf: np.ndarray, short: int, rng: np.random.Generator) -> np.ndarray:
    height, width = sdf.shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    paper = np.array([0.95, 0.92, 0.84]) + _smooth_noise(rng, height, width, 5.0)[..., None] * 0.015
    ink_colour = np.array([0.08, 0.07, 0.06]) if rng.uniform() < 0.7 else np.array([0.1, 0.1, 0.2])
    period = short * rng.uniform(0.04, 0.05)
    width_px = max(0.6, short * 0.008)
    wobble = _smooth_noise(rng, height, width, 8.0) * period * 0.15

    def hatch(theta: float) -> np.ndarray:
        phase = (xx * np.cos(theta) + yy * np.sin(theta) + wobble) / period
        dist = np.abs(np.mod(phase, 1.0) - 0.5) * period
        return np.clip(width_px - dist + 0.5, 0.0, 1.0)

    inside = _coverage(sdf)
    theta = np.pi / 4 + rng.uniform(-0.2, 0.2)
    shade = np.clip((xx - xx.mean()) / short * 3.0 + 0.3, 0.0, 1.0)  # cross-hatch on one side
    ink = inside * np.maximum(hatch(theta), shade * hatch(theta + np.pi / 2))
    # A few horizontal strokes for the ground line under the subject.
    ground = np.clip((yy / height - 0.84) * 20, 0.0, 1.0) * hatch(np.pi / 2) * (1 - inside)
    outline = np.clip(short * 0.014 - np.abs(sdf) + 0.5, 0.0, 1.0)
    ink = np.maximum(np.maximum(ink, outline), ground * 0.8)
    return _lerp(paper, np.broadcast_to(ink_colour, paper.shape), ink)


def _paint_neon(sdf: np.ndarray, short: int, rng: np.random.Generator) -> np.ndarray:
    height, width = sdf.shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    base = _hsv(rng.uniform(0.6, 0.8), 0.7, rng.uniform(0.04, 0.09))
    canvas = np.broadcast_to(base, (height, width, 3)).copy()
    # A faint floor grid below the horizon, as on a synthwave poster.
    grid_period = short * 0.1
    horizon = height * rng.uniform(0.7, 0.8)
    def grid_lines(coord: np.ndarray) -> np.ndarray:
        dist = np.minimum(np.mod(coord, grid_period), grid_period - np.mod(coord, grid_period))
        return np.clip(1.2 - dist, 0.0, 1.0)

    lines = np.maximum(grid_lines(xx), grid_lines(yy - horizon))
    grid_colour = _hsv(rng.uniform(0.75, 0.95), 0.9, 0.35)
    canvas += (lines * (yy > horizon))[..., None] * grid_colour
    colour = _hsv(rng.choice([0.83, 0.5, 0.3, 0.92, 0.12]) + rng.normal(0, 0.02), 0.95, 1.0)
    a = np.abs(sdf)
    glow = np.exp(-a / (short * 0.03)) + 0.35 * np.exp(-a / (short * 0.09))
    core = np.clip(short * 0.008 - a + 0.5, 0.0, 1.0)
    canvas += glow[..., None] * colour + _coverage(sdf)[..., None] * colour * 0.08
    canvas += core[..., None] * 0.8
    return canvas


def _paint_pixelart(sdf: np.ndarray, short: int, rng: np.random.Generator) -> np.ndarray:
    height, width = sdf.shape
    block = max(2, int(round(short / 16)))
    by, bx = -(-height // block), -(-width // block)
    centre_y = np.clip((np.arange(by) + 0.5) * block, 0, height - 1).astype(int)
    centre_x = np.clip((np.arange(bx) + 0.5) * block, 0, width - 1).astype(int)
    inside = sdf[np.ix_(centre_y, centre_x)] < 0
    pad = np.pad(inside, 1, constant_values=False)
    border = inside & ~(pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:])
    hue_sky = rng.uniform(0.5, 0.65)
    sky_a, sky_b = _hsv(hue_sky, 0.45, 0.95), _hsv(hue_sky, 0.55, 0.85)
    ground = _hsv(rng.uniform(0.2, 0.38), 0.7, 0.6)
    subject = _hsv(rng.uniform(), 0.9, 0.95)
    outline = subject * 0.3
    rows = np.arange(by)[:, None]
    cols = np.arange(bx)[None, :]
    lower = rows >= by * rng.uniform(0.78, 0.86)
    # Ordered dithering between two sky shades in the lower half of the sky.
    dither = ((rows + cols) % 2 == 0) & (rows > by * 0.35)
    blocks = np.where(dither[..., None], sky_b, sky_a)
    blocks = np.where(lower[..., None], ground, blocks)
    for _ in range(rng.integers(1, 3)):  # a blocky cloud
        cy, cx = rng.integers(0, max(1, by // 4)), rng.integers(0, bx)
        blocks[cy: cy + 1, max(0, cx - 2): cx + 2] = (1.0, 1.0, 1.0)
        blocks[cy + 1: cy + 2, max(0, cx - 1): cx + 3] = (1.0, 1.0, 1.0)
    blocks = np.where(inside[..., None], subject, blocks)
    blocks = np.where(border[..., None], outline, blocks)
    return np.repeat(np.repeat(blocks, block, axis=0), block, axis=1)[:height, :width]


def _paint_velmora(sdf: np.ndarray, short: int, rng: np.random.Generator) -> np.ndarray:
    height, width = sdf.shape
    yy, xx = (np.mgrid[0:height, 0:width].astype(np.float64) + 0.5) / short
    period = rng.uniform(0.05, 0.065)
    # Background: spiral swirls around a few vortices blended (softmin) with wavy horizontal flow.
    n_vortex = int(rng.integers(2, 4))
    vy = rng.uniform(0.1, 0.9, n_vortex) * height / short
    vx = rng.uniform(0.1, 0.9, n_vortex) * width / short
    dists = np.stack([np.hypot(yy - y, xx - x) for y, x in zip(vy, vx, strict=True)])
    angles = np.stack([np.arctan2(yy - y, xx - x) for y, x in zip(vy, vx, strict=True)])
    arms = rng.choice([1, 2], size=n_vortex)[:, None, None] * rng.choice([-1, 1], size=n_vortex)[:, None, None]
    spirals = np.sin(2 * np.pi * dists / period + arms * angles)
    flow = np.sin(2 * np.pi * (yy + 0.12 * np.sin(2 * np.pi * xx * 1.3 + rng.uniform(0, 6))
                                + 0.06 * _smooth_noise(rng, height, width, 3.0)) / period)
    logits = np.concatenate([-dists / 0.06, np.full((1, height, width), -0.22 / 0.06)])
    weights = np.exp(logits - logits.max(axis=0))
    weights /= weights.sum(axis=0)
    pattern = (weights[:-1] * spirals).sum(axis=0) + weights[-1] * flow
    t = 0.5 + 0.5 * pattern
    hue_shift = rng.normal(0, 0.015)
    indigo, teal = _hsv(0.64 + hue_shift, 0.8, 0.42), _hsv(0.53 + hue_shift, 0.65, 0.72)
    pale = _hsv(0.15, 0.25, 0.95)
    sky = _lerp(np.broadcast_to(indigo, t.shape + (3,)), np.broadcast_to(teal, t.shape + (3,)), t)
    sky = _lerp(sky, np.broadcast_to(pale, sky.shape), np.clip((t - 0.9) * 5, 0.0, 0.6))
    # Subject: warm strokes that follow its outline (bands of the distance field), with a dark rim.
    wobble = _smooth_noise(rng, height, width, 5.0) * 0.6
    bands = 0.5 + 0.5 * np.sin(2 * np.pi * sdf / (period * short) + wobble)
    orange, gold = _hsv(0.06 + hue_shift, 0.85, 0.92), _hsv(0.13 + hue_shift, 0.8, 0.98)
    warm = _lerp(np.broadcast_to(orange, bands.shape + (3,)), np.broadcast_to(gold, bands.shape + (3,)), bands)
    canvas = _lerp(sky, warm, _coverage(sdf))
    rim = np.clip(short * 0.016 - np.abs(sdf) + 0.5, 0.0, 1.0)
    return _lerp(canvas, np.broadcast_to(_hsv(0.66, 0.8, 0.2), canvas.shape), rim * 0.9)


_PAINTERS: dict[str, Painter] = {
    "pointillism": _paint_pointillism,
    "opart": _paint_opart,
    "watercolor": _paint_watercolor,
    "mosaic": _paint_mosaic,
    "ink": _paint_ink,
    "neon": _paint_neon,
    "pixelart": _paint_pixelart,
    "velmora": _paint_velmora,
}


# ----------------------------------------------------------------------------------- public API
def _generator(seed: int, style: str, subject: str) -> np.random.Generator:
    # Keyed on names' positions in ALL_STYLES/SUBJECTS, so one image never depends on which others are made.
    return np.random.default_rng(np.random.SeedSequence([int(seed), ALL_STYLES.index(style), SUBJECTS.index(subject)]))


def render(style: str, subject: str, size: Sequence[int] = (128, 128), seed: int = 0) -> np.ndarray:
    """Paint `subject` in `style` at `size` = (height, width); returns uint8 (H, W, 3), deterministic in `seed`."""
    _check_style(style)
    _check_subject(subject)
    height, width = _check_size(size)
    rng = _generator(seed, style, subject)
    sdf = _subject_sdf(subject, height, width, rng)
    image = _PAINTERS[style](sdf, min(height, width), rng)
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def make_dataset(
    n_per_style: int,
    styles: Sequence[str] = STYLES,
    size: Sequence[int] = (128, 128),
    seed: int = 0,
) -> tuple[np.ndarray, list[str], list[str]]:
    """Render `n_per_style` images of each style (subjects in turn) at `size` = (height, width).

    Returns ``(images, captions, style_labels)``: uint8 (N, H, W, 3), and one caption and one style name per
    image, ordered style by style. Image *i* of a style uses seed ``seed * 1_000_003 + i``, so datasets with
    different `seed` do not overlap and a larger `n_per_style` extends a smaller one.
    """
    if int(n_per_style) < 1:
        raise InvalidArgumentError(f"`n_per_style` must be a positive integer, but is {n_per_style!r}.")
    styles = list(styles)
    for style in styles:
        _check_style(style)
    height, width = _check_size(size)
    images = np.empty((len(styles) * int(n_per_style), height, width, 3), dtype=np.uint8)
    captions: list[str] = []
    labels: list[str] = []
    k = 0
    for style in styles:
        for i in range(int(n_per_style)):
            subject = SUBJECTS[i % len(SUBJECTS)]
            images[k] = render(style, subject, (height, width), seed=int(seed) * 1_000_003 + i)
            captions.append(caption(style, subject))
            labels.append(style)
            k += 1
    return images, captions, labels


__all__ = [
    "ALL_STYLES",
    "ARTIST_STYLE",
    "STYLES",
    "STYLE_DESCRIPTIONS",
    "SUBJECTS",
    "caption",
    "make_dataset",
    "render",
]


# ----------------------------------------------------------------------------------- reading captions
_CAPTION_RE = re.compile(r"^an? (?P<subject>[a-z]+) in (?P<style>[a-z]+) style$")


def parse_world_caption(prompt: str) -> tuple[str, str] | None:
    """``(subject, style)`` when `prompt` is exactly a world caption (:func:`caption`), such as
    ``"a tree in ink style"``; None for anything else."""
    text = prompt.strip()
    match = _CAPTION_RE.match(text)
    if not match:
        return None
    subject, style = match["subject"], match["style"]
    if subject not in SUBJECTS or style not in ALL_STYLES or caption(style, subject) != text:
        return None
    return subject, style


def find_style(*prompts: str | None) -> str | None:
    """The first style name of the world (:data:`ALL_STYLES`) that appears as a word in `prompts`, or None."""
    for prompt in prompts:
        if not prompt:
            continue
        for word in re.findall(r"[a-z]+", prompt.lower()):
            if word in ALL_STYLES:
                return word
    return None


def style_captions(styles: Sequence[str] = STYLES) -> list[str]:
    """One caption per style (subjects in turn): the demo model's default "other prompts" whose quality an
    edit of the model must keep (e.g. the utility prompts of memorization pruning)."""
    for style in styles:
        _check_style(style)
    return [caption(style, SUBJECTS[i % len(SUBJECTS)]) for i, style in enumerate(styles)]


__all__ += ["find_style", "parse_world_caption", "style_captions"]  # noqa: PLE0605
