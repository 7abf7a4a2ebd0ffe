"""Tests for artshield.engine.transforms: the differentiable EOT transforms and their spec grammar."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from artshield.engine.transforms import (
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
    jpeg_pil,
    parse_transforms,
    quantization_tables,
    transform_from_config,
)
from artshield.errors import InvalidArgumentError

# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def natural_images(
    batch: int = 2, channels: int = 3, height: int = 48, width: int = 64, seed: int = 0
) -> torch.Tensor:
    """Natural-ish test images on the 8-bit grid: smooth gradients, hard-edged shapes, mild noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    images = []
    for _ in range(batch):
        a, b, phase = torch.rand(3, channels, 1, 1, generator=g)
        x = 0.5 + 0.3 * torch.sin(6 * a * xx + 4 * b * yy + 6 * phase)
        disc = ((yy - 0.5) ** 2 + (xx - 0.4) ** 2).sqrt() < 0.2
        x = torch.where(disc, torch.rand(channels, 1, 1, generator=g).expand_as(x), x)
        x[:, height // 5 : height // 3, width // 2 :] = torch.rand(channels, 1, 1, generator=g)
        x = x + 0.03 * torch.randn(channels, height, width, generator=g)
        images.append(x.clamp(0, 1))
    # On the 8-bit grid, so that PIL (which must quantise) and DiffJPEG see the same pixels.
    return (torch.stack(images) * 255).round() / 255


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(1.0 / ((a.double() - b.double()) ** 2).mean().item())


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# One instance of every transform and notable configuration; ids keep failures readable.
ALL = {
    "identity": Identity(),
    "jpeg": DiffJPEG(),
    "jpeg-range": DiffJPEG(quality=(50, 90)),
    "jpeg-cubic": DiffJPEG(quality=30, rounding="cubic"),
    "jpeg-444": DiffJPEG(subsampling="4:4:4"),
    "resize": Resize(),
    "resize-bicubic": Resize(scale=(0.3, 0.7), mode="bicubic"),
    "resize-nearest": Resize(scale=0.5, mode="nearest"),
    "crop": RandomCrop(),
    "crop-small": RandomCrop(scale=(0.2, 0.5), mode="bicubic"),
    "noise": GaussianNoise(),
    "noise-range": GaussianNoise(sigma=(0.0, 0.1)),
    "blur": GaussianBlur(),
    "compose": Compose([Resize(), DiffJPEG(quality=(50, 90)), GaussianNoise(0.02)]),
    "choice": RandomChoice([Identity(), GaussianBlur(1.0)], p=[0.3, 0.7]),
    "default": default_robust_transforms(),
}
RANDOM = [
    "jpeg-range",
    "resize",
    "resize-bicubic",
    "crop",
    "crop-small",
    "noise",
    "noise-range",
    "blur",
    "compose",
]


# --------------------------------------------------------------------------------------------------
# Contract: shape, range, dtype, device, gradients, determinism
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ALL))
@pytest.mark.parametrize("shape", [(2, 3, 37, 53), (1, 1, 37, 53), (2, 3, 16, 16), (1, 3, 1, 2)])
def test_shape_range_dtype_preserved(name: str, shape: tuple[int, ...]) -> None:
    images = torch.rand(shape, generator=gen(1))
    out = ALL[name](images, gen())
    assert isinstance(ALL[name], Transform)
    assert out.shape == images.shape and out.dtype == images.dtype and out.device == images.device
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("name", list(ALL))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_dtypes_preserved(name: str, dtype: torch.dtype) -> None:
    images = torch.rand(2, 3, 19, 21, generator=gen(2)).to(dtype)
    out = ALL[name](images, gen())
    assert out.dtype == dtype and out.shape == images.shape
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("name", list(ALL))
def test_empty_batch(name: str) -> None:
    images = torch.rand(0, 3, 8, 8)
    assert ALL[name](images, gen()).shape == (0, 3, 8, 8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", list(ALL))
def test_cuda_images_with_cpu_generator(name: str) -> None:
    images = natural_images(2, 3, 37, 53)
    cpu = ALL[name](images, gen(3))
    cuda = ALL[name](images.cuda(), gen(3))
    assert cuda.device.type == "cuda"
    # Same draws from the same CPU generator: only floating-point differences remain.
    assert (cuda.cpu() - cpu).abs().mean() < 2e-3


@pytest.mark.parametrize("name", list(ALL))
@pytest.mark.parametrize("channels", [3, 1])
def test_gradients_finite_and_nonzero(name: str, channels: int) -> None:
    # Values kept away from 0 and 1 so that the final clamp (whose gradient is honestly zero) is inactive.
    images = (0.2 + 0.6 * natural_images(2, channels, 37, 53)).requires_grad_(True)
    weights = torch.randn(2, channels, 37, 53, generator=gen(4))
    (ALL[name](images, gen()) * weights).sum().backward()
    grad = images.grad
    assert grad is not None and torch.isfinite(grad).all()
    # Nearest-neighbour resize at half scale reaches only a quarter of the pixels; all others reach most.
    assert (grad != 0).double().mean() > 0.2


@pytest.mark.parametrize("rounding", ["ste", "cubic"])
def test_diffjpeg_gradient_is_useful(rounding: str) -> None:
    # JPEG keeps each block's mean (the DC coefficient is finely quantised), so d(mean out)/d(in)
    # should be close to the identity's gradient; with straight-through rounding it is almost exact.
    images = natural_images(2, 3, 32, 32).requires_grad_(True)
    DiffJPEG(quality=75, rounding=rounding)(images, gen()).mean().backward()
    ratio = images.grad.sum().item()  # identity would give exactly 1
    assert (0.9 < ratio < 1.1) if rounding == "ste" else (0.05 < ratio < 1.1)


@pytest.mark.parametrize("name", list(ALL))
def test_deterministic_given_generator_state(name: str) -> None:
    images = natural_images(3, 3, 37, 53)
    first = ALL[name](images, gen(7))
    second = ALL[name](images, gen(7))
    assert torch.equal(first, second)


@pytest.mark.parametrize("name", RANDOM)
def test_varies_across_generator_states(name: str) -> None:
    images = natural_images(2, 3, 37, 53)
    outputs = [ALL[name](images, gen(seed)) for seed in range(4)]
    assert any(not torch.equal(outputs[0], o) for o in outputs[1:])


@pytest.mark.parametrize("name", ["jpeg-range", "resize", "crop", "noise", "blur"])
def test_parameters_drawn_per_sample(name: str) -> None:
    images = natural_images(1, 3, 37, 53).expand(6, -1, -1, -1)
    out = ALL[name](images, gen(5))
    assert any(not torch.equal(out[0], out[i]) for i in range(1, 6))


def test_random_choice_one_per_call_and_weights() -> None:
    images = natural_images(4, 3, 16, 16)
    always_blur = RandomChoice([Identity(), GaussianBlur(1.0)], p=[0, 1])
    blurred = GaussianBlur(1.0)(images, gen())
    assert all(torch.allclose(always_blur(images, gen(s)), blurred) for s in range(5))
    uniform = RandomChoice([Identity(), GaussianBlur()])
    picks = {type(uniform.choose(gen(s))).__name__ for s in range(20)}
    assert picks == {"Identity", "GaussianBlur"}
    # Per batch: every sample sees the same transform (identity keeps all, or none).
    out = default_robust_transforms()(images, gen(11))
    same = [torch.equal(out[i], images[i]) for i in range(4)]
    assert all(same) or not any(same)


def test_identity_returns_input() -> None:
    images = torch.rand(1, 3, 5, 5)
    assert Identity()(images, gen()) is images


def test_noise_statistics_and_blur_zero() -> None:
    images = torch.full((1, 3, 64, 64), 0.5)
    out = GaussianNoise(sigma=0.05)(images, gen())
    assert abs((out - images).std().item() - 0.05) < 0.005
    assert torch.allclose(GaussianBlur(sigma=0.0)(images, gen()), images)
    assert torch.allclose(
        GaussianBlur(sigma=2.0)(images, gen()), images, atol=1e-6
    )  # constant stays constant


def test_resize_and_crop_at_full_scale_are_identity() -> None:
    images = natural_images(2, 3, 37, 53)
    assert torch.allclose(Resize(scale=1.0)(images, gen()), images)
    assert torch.allclose(RandomCrop(scale=1.0)(images, gen()), images)


# --------------------------------------------------------------------------------------------------
# DiffJPEG against real JPEG
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("quality", [10, 50, 75, 97])
def test_quantization_tables_match_pillow(quality: int) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as saved:
        tables = saved.quantization
    luma, chroma = quantization_tables(quality)
    assert luma.flatten().tolist() == list(tables[0]) and chroma.flatten().tolist() == list(tables[1])
    batched_luma, _ = quantization_tables(torch.tensor([quality, 50]))
    assert torch.equal(batched_luma[0], luma) and batched_luma.shape == (2, 8, 8)


@pytest.mark.parametrize("quality", [30, 50, 75, 90])
@pytest.mark.parametrize(("channels", "size"), [(3, (48, 64)), (3, (37, 53)), (1, (37, 53))])
def test_diffjpeg_matches_pil_jpeg(quality: int, channels: int, size: tuple[int, int]) -> None:
    images = natural_images(3, channels, *size)
    real = jpeg_pil(images, quality)
    ours = DiffJPEG(quality)(images, gen())
    agreement, identity = psnr(ours, real), psnr(images, real)
    # Measured ~44-47 dB (RGB) and ~50 dB (grey) with Pillow 13 / libjpeg-turbo; the identity is 25-32 dB.
    assert agreement > 38, f"DiffJPEG vs PIL at q={quality}: {agreement:.1f} dB"
    assert agreement > identity + 8


def test_diffjpeg_444_and_cubic_match_pil_jpeg() -> None:
    images = natural_images(2, 3, 37, 53)
    assert (
        psnr(DiffJPEG(75, subsampling="4:4:4")(images, gen()), jpeg_pil(images, 75, subsampling="4:4:4")) > 38
    )
    assert psnr(DiffJPEG(75, rounding="cubic")(images, gen()), jpeg_pil(images, 75)) > 38


@pytest.mark.parametrize("channels", [3, 1])
def test_diffjpeg_monotonic_in_quality(channels: int) -> None:
    images = natural_images(2, channels, 48, 48)
    fidelity = [psnr(DiffJPEG(q)(images, gen()), images) for q in (10, 30, 50, 75, 90, 100)]
    assert fidelity == sorted(fidelity), fidelity


def test_diffjpeg_quality_range_sampled_per_call() -> None:
    jpeg = DiffJPEG(quality=(50, 90))
    drawn = torch.cat([jpeg.sample_quality(8, gen(s)) for s in range(10)])
    assert drawn.min() >= 50 and drawn.max() <= 90 and len(drawn.unique()) > 10


def test_jpeg_pil_contract() -> None:
    images = natural_images(2, 3, 21, 30).double()
    out = jpeg_pil(images, [40, 90])
    assert out.shape == images.shape and out.dtype == torch.float64 and not out.requires_grad
    assert torch.equal(out * 255, (out * 255).round())
    assert psnr(out[0], images[0]) < psnr(out[1], images[1])  # quality 40 loses more than 90
    single = jpeg_pil(images[0], 75)
    assert single.shape == images[0].shape
    grey = jpeg_pil(natural_images(1, 1, 9, 9), 75)
    assert grey.shape == (1, 1, 9, 9)
    with pytest.raises(InvalidArgumentError, match="quality"):
        jpeg_pil(images, [75])
    with pytest.raises(InvalidArgumentError, match="channels"):
        jpeg_pil(torch.rand(1, 2, 8, 8), 75)


# --------------------------------------------------------------------------------------------------
# Property test
# --------------------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(list(ALL)),
    batch=st.integers(1, 2),
    channels=st.sampled_from([1, 3]),
    height=st.integers(1, 24),
    width=st.integers(1, 24),
    seed=st.integers(0, 2**31 - 1),
    extremes=st.booleans(),
)
def test_property_range_and_shape(
    name: str, batch: int, channels: int, height: int, width: int, seed: int, extremes: bool
) -> None:
    g = gen(seed)
    images = torch.rand(batch, channels, height, width, generator=g)
    if extremes:  # saturated pixels are where clamping and JPEG ringing matter most
        images = (images > 0.5).float()
    out = ALL[name](images, g)
    assert out.shape == images.shape and torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1


# --------------------------------------------------------------------------------------------------
# Configs and the spec grammar
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ALL))
def test_config_round_trip_through_json(name: str) -> None:
    transform = ALL[name]
    config = json.loads(json.dumps(transform.config))
    assert "name" in config
    rebuilt = transform_from_config(config)
    assert rebuilt == transform and rebuilt.config == transform.config
    images = natural_images(2, 3, 20, 20)
    assert torch.equal(rebuilt(images, gen(9)), transform(images, gen(9)))


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("jpeg", DiffJPEG()),
        ("none", Identity()),
        (" JPEG : quality = 60 ", DiffJPEG(60)),
        ("jpeg,resize,crop,noise", RandomChoice([DiffJPEG(), Resize(), RandomCrop(), GaussianNoise()])),
        ("jpeg:quality=50-90,noise:sigma=0.05", RandomChoice([DiffJPEG((50, 90)), GaussianNoise(0.05)])),
        (
            "identity,resize:scale=0.5-0.9:mode=bicubic+jpeg:quality=75",
            RandomChoice([Identity(), Compose([Resize((0.5, 0.9), "bicubic"), DiffJPEG(75)])]),
        ),
        ("jpeg:subsampling=4:4:4:rounding=cubic", DiffJPEG(subsampling="4:4:4", rounding="cubic")),
        ("blur:sigma=.5-2e0", GaussianBlur((0.5, 2.0))),
        ("default", default_robust_transforms()),
    ],
)
def test_parse_transforms(spec: str, expected: Transform) -> None:
    parsed = parse_transforms(spec)
    assert parsed == expected
    assert transform_from_config(json.loads(json.dumps(parsed.config))) == parsed


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ("", "''"),
        ("jpg", "jpg"),
        ("jpeg:quality=200", "jpeg:quality=200"),
        ("jpeg:qualty=50", "qualty"),
        ("jpeg:quality", "jpeg:quality"),
        ("jpeg:", "jpeg:"),
        ("jpeg,,noise", "jpeg,,noise"),
        ("noise:sigma=0.1-0.05", "noise:sigma=0.1-0.05"),
        ("noise:sigma=-0.1", "noise:sigma=-0.1"),
        ("jpeg:quality=50-90-100", "50-90-100"),
        ("jpeg:quality=62.5", "jpeg:quality=62.5"),
        ("resize:mode=cubic", "cubic"),
        ("resize:scale=0", "resize:scale=0"),
        ("crop:scale=1.5", "crop:scale=1.5"),
        ("jpeg:quality=50:quality=60", "quality"),
        ("identity:x=1", "identity:x=1"),
        ("default+jpeg", "default+jpeg"),
        ("jpeg+", "jpeg+"),
    ],
)
def test_bad_specs_name_the_bad_part(spec: str, named: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        parse_transforms(spec)
    assert named in str(info.value)


@pytest.mark.parametrize(
    "config",
    [
        {"quality": 75},
        {"name": "jpegg"},
        {"name": "jpeg", "qualty": 75},
        {"name": "compose", "transforms": []},
        {"name": "random_choice", "transforms": [{"name": "identity"}], "p": [1, 2]},
        {"name": "random_choice", "transforms": [{"name": "identity"}], "weights": [1]},
    ],
)
def test_bad_configs(config: dict) -> None:
    with pytest.raises(InvalidArgumentError):
        transform_from_config(config)


def test_bad_constructor_arguments_and_inputs() -> None:
    for build in (
        lambda: DiffJPEG(quality=0),
        lambda: DiffJPEG(quality=(90, 50)),
        lambda: DiffJPEG(quality=True),
        lambda: DiffJPEG(rounding="exact"),
        lambda: Resize(scale=(0.0, 1.0)),
        lambda: GaussianNoise(sigma=float("nan")),
        lambda: GaussianBlur(sigma="1"),
        lambda: Compose([]),
        lambda: RandomChoice([Identity()], p=[-1]),
    ):
        with pytest.raises(InvalidArgumentError):
            build()
    with pytest.raises(InvalidArgumentError, match="images"):
        Resize()(torch.rand(3, 8, 8), gen())
    with pytest.raises(InvalidArgumentError, match="images"):
        GaussianNoise()(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), gen())
    with pytest.raises(InvalidArgumentError, match="generator"):
        GaussianNoise()(torch.rand(1, 3, 8, 8), 0)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="channels"):
        DiffJPEG()(torch.rand(1, 4, 8, 8), gen())
