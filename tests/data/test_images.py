import io
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leukoscope.data.images import decode_rgb, is_image_name
from leukoscope.errors import ImageDecodeError
from tests.conftest import cell_image


def _bytes(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("RGB", "JPEG"),
        ("RGB", "PNG"),
        ("RGBA", "PNG"),
        ("L", "PNG"),
        ("P", "PNG"),
        ("RGB", "TIFF"),
        ("RGB", "BMP"),
        ("L", "BMP"),
    ],
)
def test_formats_and_modes_decode_to_rgb(mode: str, fmt: str) -> None:
    image = cell_image(1, size=48).convert(mode)
    out = decode_rgb(_bytes(image, fmt), name=f"x.{fmt.lower()}")
    assert out.mode == "RGB"
    assert out.size == (48, 48)


def test_exif_orientation_is_applied_once_and_dropped() -> None:
    image = Image.new("RGB", (40, 20), (255, 255, 255))
    image.paste((0, 0, 0), (0, 0, 10, 20))  # a black band on the left
    exif = image.getexif()
    exif[0x0112] = 6  # stored turned: shown turned 90 degrees clockwise
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, exif=exif)
    out = decode_rgb(buffer.getvalue(), name="turned.jpg")
    assert out.size == (20, 40)
    pixels = np.asarray(out, dtype=int)
    assert pixels[:8].mean() < 40 < 215 < pixels[-8:].mean()  # the band is now on top
    assert 0x0112 not in out.getexif()


def test_sixteen_bit_grayscale_is_rescaled_not_clipped() -> None:
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    data = _bytes(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = np.asarray(decode_rgb(data))
    assert out.shape == (64, 64, 3)
    assert out.min() == 0 and out.max() == 255
    assert len(np.unique(out[..., 0])) > 200  # a real ramp, not saturated


def test_sixteen_bit_decoding_makes_no_float64_copy() -> None:
    """Peak memory of the numpy copies (tracemalloc sees numpy's buffers, not Pillow's):
    three float64 images (25 bytes a pixel measured) before; now the 16-bit pixels (read
    through a bytes copy), the 8-bit result and a float32 block of rows (5 bytes a pixel)."""
    side = 1500
    rng = np.random.default_rng(0)
    data = _bytes(Image.fromarray(rng.integers(0, 4096, (side, side), dtype=np.uint16)), "PNG")
    tracemalloc.start()
    try:
        out = decode_rgb(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.size == (side, side)
    assert peak < 6 * side * side, f"{peak / side / side:.1f} bytes a pixel"


def test_rgba_transparency_becomes_white() -> None:
    image = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    out = decode_rgb(_bytes(image, "PNG"))
    assert out.getpixel((0, 0)) == (255, 255, 255)


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty file") as info:
        decode_rgb(path)
    assert str(path) in str(info.value)


def test_text_renamed_jpg(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture")
    with pytest.raises(ImageDecodeError, match="not an image"):
        decode_rgb(path)


def test_truncated_jpeg(tmp_path: Path) -> None:
    data = _bytes(cell_image(2, size=128), "JPEG", quality=95)
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageDecodeError, match="truncated") as info:
        decode_rgb(path)
    assert "cut.jpg" in str(info.value)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    bomb = _bytes(Image.new("1", (9000, 9000)), "PNG")  # 81 MP in a few kB
    assert len(bomb) < 100_000
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        decode_rgb(bomb, name="bomb.png")
    with pytest.raises(ImageDecodeError, match="too large"):
        decode_rgb(_bytes(cell_image(0, size=64), "PNG"), max_pixels=1000)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageDecodeError, match="file not found"):
        decode_rgb(tmp_path / "nope.png")


def test_unsupported_format_is_named() -> None:
    data = _bytes(cell_image(0, size=32), "ICO")
    with pytest.raises(ImageDecodeError, match="unsupported image format ICO"):
        decode_rgb(data)


def test_gif_first_frame_is_read() -> None:
    frames = [cell_image(k, size=32).convert("P") for k in range(2)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    out = decode_rgb(buffer.getvalue(), name="cells.gif")
    assert out.mode == "RGB" and out.size == (32, 32)


def test_jpeg_draft_decodes_smaller_but_not_below_target() -> None:
    data = _bytes(cell_image(3, size=360), "JPEG")
    out = decode_rgb(data, draft_size=100)
    assert 100 <= min(out.size) < 360


@pytest.mark.parametrize(
    ("name", "expected"),
    [("a.JPG", True), ("b.tiff", True), (".DS_Store", False), (".x.jpg", False), ("c.txt", False)],
)
def test_is_image_name(name: str, expected: bool) -> None:
    assert is_image_name(name) is expected
