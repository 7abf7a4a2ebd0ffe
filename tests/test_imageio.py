"""artshield.imageio: every input mode reads correctly, writes are atomic, safe and within budget."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms

from artshield.errors import ImageReadError, ImageWriteError, InvalidArgumentError
from artshield.imageio import (
    IMAGE_EXTENSIONS,
    ImageTooLargeError,
    LoadedImage,
    from_pil,
    is_image_file,
    iter_images,
    quantize,
    read_image,
    to_pil,
    write_png,
)

RNG = np.random.default_rng(1234)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _u8(shape: tuple[int, ...]) -> np.ndarray:
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def _as_u8(t: torch.Tensor) -> np.ndarray:
    """(1, C, H, W) float tensor → (H, W, C) uint8 exactly (values are k/255)."""
    return torch.round(t[0] * 255).permute(1, 2, 0).numpy().astype(np.uint8)


def _no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------------------------
# Reading: modes
# ------------------------------------------------------------------------------------------------


def test_rgba_with_partial_alpha_round_trips(tmp_path: Path) -> None:
    data = _u8((12, 17, 4))
    data[0, 0, 3], data[0, 1, 3], data[0, 2, 3] = 0, 128, 255
    src = tmp_path / "rgba.png"
    Image.fromarray(data).save(src)
    before = _digest(src)

    img = read_image(src)
    assert img.mode == "RGBA" and img.format == "PNG" and img.bit_depth == 8
    assert img.rgb.shape == (1, 3, 12, 17) and img.rgb.dtype == torch.float32
    assert img.alpha is not None and img.alpha.shape == (1, 1, 12, 17)
    assert np.array_equal(_as_u8(img.rgb), data[:, :, :3])
    assert np.array_equal(_as_u8(img.alpha), data[:, :, 3:])
    assert img.size == (17, 12) and img.channels == 3 and img.has_alpha

    out = write_png(tmp_path / "out" / "rgba.png", img.rgb, alpha=img.alpha, text={"artshield": "advdm eps=8"})
    assert _digest(src) == before  # the input is never modified
    with Image.open(out) as back:
        assert back.mode == "RGBA"
        assert np.array_equal(np.asarray(back), data)
        assert back.text["artshield"] == "advdm eps=8"
    assert read_image(out).info == {"artshield": "advdm eps=8"}


def test_greyscale_l_stays_single_channel(tmp_path: Path) -> None:
    data = _u8((9, 14))
    src = tmp_path / "grey.png"
    Image.fromarray(data).save(src)
    img = read_image(src)
    assert img.mode == "L" and img.rgb.shape == (1, 1, 9, 14) and img.alpha is None
    out = write_png(tmp_path / "grey_out.png", img.rgb)
    with Image.open(out) as back:
        assert back.mode == "L"
        assert np.array_equal(np.asarray(back), data)


def test_greyscale_with_alpha_la(tmp_path: Path) -> None:
    data = _u8((8, 10, 2))
    src = tmp_path / "la.png"
    Image.fromarray(data).save(src)
    img = read_image(src)
    assert img.rgb.shape == (1, 1, 8, 10) and img.alpha is not None
    out = write_png(tmp_path / "la_out.png", img.rgb, alpha=img.alpha)
    with Image.open(out) as back:
        assert back.mode == "LA"
        assert np.array_equal(np.asarray(back), data)


def test_16bit_greyscale_round_trips_exactly(tmp_path: Path) -> None:
    data = RNG.integers(0, 65536, (10, 13)).astype(np.uint16)
    data[0, 0], data[0, 1] = 0, 65535
    src = tmp_path / "g16.png"
    Image.fromarray(data).save(src)
    img = read_image(src)
    assert img.mode in ("I;16", "I;16B", "I") and img.bit_depth == 16 and img.source_bit_depth == 16
    assert img.rgb.shape == (1, 1, 10, 13)
    assert np.array_equal(np.round(img.rgb[0, 0].numpy().astype(np.float64) * 65535).astype(np.uint16), data)
    out = write_png(tmp_path / "g16_out.png", img.rgb, bit_depth=16, reference=img, max_abs_change=2 / 65535)
    with Image.open(out) as back:
        assert back.mode == "I;16"
        assert np.array_equal(np.asarray(back), data)


def test_32bit_integer_mode_i_is_read_as_16_bits() -> None:
    data = RNG.integers(0, 65536, (6, 7)).astype(np.int32)
    img = from_pil(Image.fromarray(data))
    assert img.mode == "I" and img.bit_depth == 16
    assert np.array_equal(np.round(img.rgb[0, 0].numpy() * 65535).astype(np.int32), data)


def test_palette_with_transparency_becomes_rgba(tmp_path: Path) -> None:
    im = Image.new("P", (6, 4))
    im.putpalette([10, 20, 30, 200, 100, 50] + [0] * (768 - 6))
    im.putdata([0, 1] * 12)
    src = tmp_path / "pal.png"
    im.save(src, transparency=0)
    img = read_image(src)
    assert img.mode == "P" and img.rgb.shape == (1, 3, 4, 6) and img.alpha is not None
    assert _as_u8(img.rgb)[0, 0].tolist() == [10, 20, 30] and _as_u8(img.alpha)[0, 0, 0] == 0
    assert _as_u8(img.rgb)[0, 1].tolist() == [200, 100, 50] and _as_u8(img.alpha)[0, 1, 0] == 255


def test_colour_key_transparency_becomes_alpha(tmp_path: Path) -> None:
    data = np.zeros((3, 4, 3), np.uint8)
    data[0, 0] = (1, 2, 3)
    Image.fromarray(data).save(tmp_path / "key.png", transparency=(1, 2, 3))
    img = read_image(tmp_path / "key.png")
    assert img.rgb.shape == (1, 3, 3, 4) and img.alpha is not None
    assert float(img.alpha[0, 0, 0, 0]) == 0.0 and float(img.alpha[0, 0, 0, 1]) == 1.0
    Image.fromarray(data[:, :, 0]).save(tmp_path / "key_l.png", transparency=1)
    img = read_image(tmp_path / "key_l.png")
    assert img.rgb.shape == (1, 1, 3, 4) and float(img.alpha[0, 0, 0, 0]) == 0.0


def test_palette_without_transparency_and_1bit(tmp_path: Path) -> None:
    im = Image.new("P", (5, 5))
    im.putpalette([7, 8, 9] * 256)
    im.save(tmp_path / "pal.png")
    img = read_image(tmp_path / "pal.png")
    assert img.rgb.shape == (1, 3, 5, 5) and img.alpha is None
    assert _as_u8(img.rgb)[0, 0].tolist() == [7, 8, 9]

    bits = Image.new("1", (8, 3), 0)
    bits.putpixel((2, 1), 1)
    bits.save(tmp_path / "bits.png")
    img = read_image(tmp_path / "bits.png")
    assert img.mode == "1" and img.rgb.shape == (1, 1, 3, 8)
    assert img.rgb[0, 0, 1, 2] == 1.0 and img.rgb.sum() == 1.0


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    src = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (255, 0, 0, 0)).save(src, quality=95)  # pure cyan ink
    img = read_image(src)
    assert img.mode == "CMYK" and img.rgb.shape == (1, 3, 16, 16) and img.icc_profile is None
    r, g, b = (img.rgb[0, :, 8, 8] * 255).tolist()
    assert r < 20 and g > 235 and b > 235


def test_exif_orientation_6_is_applied(tmp_path: Path) -> None:
    # Stored 40 wide x 20 high with a red block top-left; orientation 6 = rotate 90° clockwise to view.
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:5, :5] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    src = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(src, exif=exif, quality=95)
    img = read_image(src)
    assert img.rgb.shape == (1, 3, 40, 20)  # display orientation: 20 wide, 40 high
    red = img.rgb[0, 0] > 0.5
    assert red[:5, -5:].all()  # top-left of the stored image is top-right when displayed
    assert not red[:, :10].any()


def test_animated_gif_and_apng_give_first_frame_with_warning(tmp_path: Path, caplog) -> None:
    frames = [Image.new("RGB", (8, 8), (60 * i, 0, 0)) for i in range(3)]
    for name in ("anim.gif", "anim.png"):
        src = tmp_path / name
        frames[0].save(src, save_all=True, append_images=frames[1:])
        with caplog.at_level(logging.WARNING, logger="artshield.imageio"):
            caplog.clear()
            img = read_image(src)
        assert img.n_frames == 3 and img.rgb.shape == (1, 3, 8, 8)
        assert float(img.rgb[0, 0].max()) == 0.0  # first frame is black
        assert any("3 frames" in r.getMessage() for r in caplog.records)


def test_16bit_rgb_png_is_reduced_honestly(tmp_path: Path, caplog) -> None:
    # Pillow cannot write a 16-bit RGB PNG, so build one by hand.
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    w, h = 4, 3
    raw = b"".join(b"\0" + np.full((w, 3), 40000, ">u2").tobytes() for _ in range(h))
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    src = tmp_path / "rgb16.png"
    src.write_bytes(png)
    with caplog.at_level(logging.WARNING, logger="artshield.imageio"):
        img = read_image(src)
    assert img.bit_depth == 8 and img.source_bit_depth == 16 and img.rgb.shape == (1, 3, h, w)
    assert abs(float(img.rgb[0, 0, 0, 0]) - 40000 / 65535) < 1 / 255
    assert any("8 bits" in r.getMessage() for r in caplog.records)


def test_icc_profile_is_carried_over(tmp_path: Path) -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = tmp_path / "icc.png"
    Image.fromarray(_u8((6, 6, 3))).save(src, icc_profile=icc)
    img = read_image(src)
    assert img.icc_profile == icc
    out = write_png(tmp_path / "icc_out.png", img.rgb, icc_profile=img.icc_profile)
    with Image.open(out) as back:
        assert back.info.get("icc_profile") == icc
    # An RGB profile is not embedded in a greyscale output.
    out = write_png(tmp_path / "grey_icc.png", img.rgb[:, :1], icc_profile=img.icc_profile)
    with Image.open(out) as back:
        assert not back.info.get("icc_profile")


def test_from_pil_and_to_pil() -> None:
    data = _u8((5, 7, 3))
    img = from_pil(Image.fromarray(data))
    assert isinstance(img, LoadedImage) and img.path is None
    assert np.array_equal(np.asarray(to_pil(img.rgb)), data)
    g16 = to_pil(torch.full((1, 1, 2, 2), 0.5), bit_depth=16)
    assert g16.mode == "I;16" and int(np.asarray(g16)[0, 0]) == 32768
    with pytest.raises(InvalidArgumentError):
        to_pil(torch.rand(1, 3, 2, 2), bit_depth=16)


# ------------------------------------------------------------------------------------------------
# Reading: errors
# ------------------------------------------------------------------------------------------------


def _png_bytes(size: tuple[int, int] = (32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(_u8((size[1], size[0], 3))).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize(
    "kind, needle",
    [
        ("missing", "no such file"),
        ("directory", "directory"),
        ("empty", "empty"),
        ("text", "not an image"),
        ("truncated", "truncated or corrupt"),
        ("corrupt", "truncated or corrupt"),
    ],
)
def test_bad_inputs_raise_image_read_error_naming_the_path(tmp_path: Path, kind: str, needle: str) -> None:
    path = tmp_path / f"{kind}.png"
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not an image\n")
    elif kind == "truncated":
        path.write_bytes(_png_bytes()[:-200])
    elif kind == "corrupt":
        data = bytearray(_png_bytes())
        data[60:90] = b"\xff" * 30  # inside IDAT: zlib stream or CRC broken
        path.write_bytes(bytes(data))
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert str(path) in str(info.value) and needle in str(info.value)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_device_is_not_a_regular_file() -> None:
    with pytest.raises(ImageReadError, match="not a regular file"):
        read_image("/dev/zero")


def test_decompression_bomb_guard(tmp_path: Path) -> None:
    src = tmp_path / "big.png"
    src.write_bytes(_png_bytes((40, 30)))
    with pytest.raises(ImageTooLargeError, match="decompression bombs") as info:
        read_image(src, max_pixels=1000)
    assert isinstance(info.value, ImageReadError)  # callers that catch read errors catch this one too
    assert str(src) in str(info.value) and "40×30 = 1200 pixels" in str(info.value)
    assert (info.value.pixels, info.value.limit) == (1200, 1000)
    assert "max_pixels=" not in str(info.value)  # no advice naming an option some commands lack
    saved = Image.MAX_IMAGE_PIXELS
    assert read_image(src, max_pixels=1200).rgb.shape == (1, 3, 30, 40)
    assert Image.MAX_IMAGE_PIXELS == saved  # Pillow's global is restored
    # Between the limit and twice the limit Pillow only warns; that must still be an error here.
    with pytest.raises(ImageReadError):
        read_image(src, max_pixels=1100)
    with pytest.raises(InvalidArgumentError):
        read_image(src, max_pixels=0)


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------


def test_refuses_to_overwrite_the_original(tmp_path: Path) -> None:
    src = tmp_path / "art.png"
    src.write_bytes(_png_bytes())
    before = _digest(src)
    img = read_image(src)
    with pytest.raises(ImageWriteError, match="original"):
        write_png(src, img.rgb, reference=img)
    with pytest.raises(ImageWriteError):
        write_png(tmp_path / "sub" / ".." / "art.png", img.rgb, reference=src)
    link = tmp_path / "link.png"
    os.link(src, link)  # the same file under another name
    with pytest.raises(ImageWriteError):
        write_png(link, img.rgb, reference=str(src))
    assert _digest(src) == before and _no_temp_files(tmp_path)


def test_write_creates_folders_and_leaves_no_temp_file(tmp_path: Path) -> None:
    out = write_png(tmp_path / "a" / "b" / "x.png", torch.rand(1, 3, 4, 5))
    assert out.is_file() and _no_temp_files(out.parent)
    assert (out.stat().st_mode & 0o777) != 0o600  # not mkstemp's private mode


def test_failed_write_leaves_no_temp_file_and_keeps_old_output(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out.png"
    write_png(out, torch.zeros(1, 3, 4, 4))
    before = _digest(out)

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half of a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(ImageWriteError, match="No space left"):
        write_png(out, torch.ones(1, 3, 4, 4))
    monkeypatch.undo()
    assert _digest(out) == before and _no_temp_files(tmp_path)

    def interrupted_replace(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted_replace)
    with pytest.raises(KeyboardInterrupt):
        write_png(out, torch.ones(1, 3, 4, 4))
    monkeypatch.undo()
    assert _digest(out) == before and _no_temp_files(tmp_path)


def test_16bit_colour_and_alpha_writer(tmp_path: Path) -> None:
    rgb = torch.rand(1, 3, 5, 6, dtype=torch.float64)
    alpha = torch.rand(1, 1, 5, 6, dtype=torch.float64)
    out = write_png(tmp_path / "c16.png", rgb, alpha=alpha, bit_depth=16, text={"k": "v", "note": "ümlaut €"})
    data = out.read_bytes()
    assert data[24:26] == bytes([16, 6])  # IHDR: 16 bits, RGBA
    # Decode the IDAT ourselves (filter type 0 rows) to check the full 16-bit values.
    pos, idat = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        if data[pos + 4:pos + 8] == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(5, 1 + 6 * 4 * 2)
    assert (rows[:, 0] == 0).all()
    values = rows[:, 1:].copy().view(">u2").reshape(5, 6, 4)
    expected = np.concatenate([quantize(rgb, 16), quantize(alpha, 16)], axis=2)
    assert np.array_equal(values, expected)
    with Image.open(out) as back:  # Pillow reads it (reduced to 8 bits), text chunks included
        back.load()
        assert back.size == (6, 5) and back.text == {"k": "v", "note": "ümlaut €"}


def test_write_argument_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError):
        write_png(tmp_path / "x.jpg", torch.rand(1, 3, 2, 2))
    with pytest.raises(InvalidArgumentError):
        write_png(tmp_path / "x.png", torch.full((1, 3, 2, 2), float("nan")))
    with pytest.raises(InvalidArgumentError):
        write_png(tmp_path / "x.png", torch.rand(2, 3, 2, 2))
    with pytest.raises(InvalidArgumentError):
        write_png(tmp_path / "x.png", torch.rand(1, 3, 2, 2), max_abs_change=0.1)
    with pytest.raises(InvalidArgumentError):
        write_png(tmp_path / "x.png", torch.rand(1, 3, 2, 2), text={"": "empty key"})
    with pytest.raises(InvalidArgumentError):
        write_png(tmp_path / "x.png", torch.rand(1, 3, 2, 2), alpha=torch.rand(1, 1, 3, 3))
    (tmp_path / "d.png").mkdir()
    with pytest.raises(ImageWriteError):
        write_png(tmp_path / "d.png", torch.rand(1, 3, 2, 2))
    assert not (tmp_path / "x.png").exists()


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    k=st.integers(0, 16),
    overshoot=st.floats(0.0, 3.0),
    height=st.integers(1, 6),
    width=st.integers(1, 6),
    channels=st.sampled_from([1, 3]),
)
def test_saved_file_never_exceeds_the_budget(tmp_path_factory, seed, k, overshoot, height, width, channels) -> None:
    """Originals on the 8-bit grid, perturbations up to k/255 (and some beyond, as a buggy method would
    produce): the saved file is within k levels of the original, exactly."""
    gen = np.random.default_rng(seed)
    orig_u8 = gen.integers(0, 256, (channels, height, width)).astype(np.uint8)
    orig_u8.flat[0] = 0  # exercise both ends of the range
    orig_u8.flat[-1] = 255
    original = torch.from_numpy(orig_u8.astype(np.float32) / 255.0)[None]
    delta = torch.from_numpy(gen.uniform(-1, 1, original.shape).astype(np.float32)) * (k / 255) * (1 + overshoot)
    protected = (original + delta).clamp(0, 1)
    out = tmp_path_factory.mktemp("budget") / "p.png"
    write_png(out, protected, reference=original, max_abs_change=k / 255)
    saved = _as_u8(read_image(out).rgb).astype(np.int64)
    assert np.abs(saved - orig_u8.transpose(1, 2, 0).astype(np.int64)).max() <= k


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(0, 300))
def test_16bit_budget_is_exact(seed: int, k: int) -> None:
    gen = np.random.default_rng(seed)
    orig = gen.integers(0, 65536, (1, 4, 5)).astype(np.int64)
    original = torch.from_numpy(orig.astype(np.float32) / 65535.0)[None]
    protected = (original + torch.from_numpy(gen.uniform(-2, 2, orig.shape).astype(np.float32)) * k / 65535).clamp(0, 1)
    q = quantize(protected, 16, reference=original, max_abs_change=k / 65535).astype(np.int64)
    assert np.abs(q[:, :, 0] - orig[0]).max() <= k


# ------------------------------------------------------------------------------------------------
# Finding images
# ------------------------------------------------------------------------------------------------


def test_is_image_file_and_iter_images(tmp_path: Path) -> None:
    (tmp_path / "b.png").write_bytes(_png_bytes((12, 12)))
    (tmp_path / "a_no_extension").write_bytes(_png_bytes((12, 12)))
    (tmp_path / "fake.jpg").write_text("not really a jpeg")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / ".hidden.png").write_bytes(_png_bytes((12, 12)))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.png").write_bytes(_png_bytes((12, 12)))

    assert is_image_file(tmp_path / "a_no_extension") and not is_image_file(tmp_path / "fake.jpg")
    assert not is_image_file(tmp_path / "sub") and not is_image_file(tmp_path / "missing.png")
    assert ".png" in IMAGE_EXTENSIONS and ".jpg" in IMAGE_EXTENSIONS

    listing = iter_images(tmp_path)
    assert list(listing) == [tmp_path / "a_no_extension", tmp_path / "b.png"]
    skipped = dict(listing.skipped)
    assert set(skipped) == {tmp_path / "fake.jpg", tmp_path / "notes.txt"}
    assert "extension" in skipped[tmp_path / "fake.jpg"]

    deep = iter_images(tmp_path, recursive=True)
    assert deep.images == [tmp_path / "a_no_extension", tmp_path / "b.png", tmp_path / "sub" / "c.png"]
    with pytest.raises(ImageReadError):
        iter_images(tmp_path / "nowhere")
    with pytest.raises(ImageReadError):
        iter_images(tmp_path / "b.png")


def test_package_split_keeps_the_public_api_and_logger(tmp_path: Path, caplog) -> None:
    # artshield.imageio is a package (reading / writing / listing); its public names are the submodules'
    # objects (so patching the submodule is what takes effect), and every part logs as "artshield.imageio".
    import artshield.imageio as imageio
    from artshield.imageio import listing, reading, writing

    assert sorted(imageio.__all__) == sorted([
        "IMAGE_EXTENSIONS", "as_rgb", "ImageListing", "ImageTooLargeError", "LoadedImage", "from_pil",
        "is_image_file", "iter_images", "quantize", "read_image", "read_mask", "to_pil", "write_png",
    ])
    for name in imageio.__all__:
        owners = [m for m in (reading, writing, listing) if getattr(m, name, None) is getattr(imageio, name)]
        assert owners and name in owners[0].__all__, name
    assert {reading.logger.name, writing.logger.name} == {"artshield.imageio"}
    frames = [Image.new("L", (4, 4), 40 * i) for i in range(2)]
    frames[0].save(tmp_path / "two.gif", save_all=True, append_images=frames[1:])
    with caplog.at_level(logging.WARNING, logger="artshield.imageio"):
        read_image(tmp_path / "two.gif")
    assert [r.name for r in caplog.records if "frames" in r.getMessage()] == ["artshield.imageio"]
