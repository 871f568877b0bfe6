"""Image decoding (cprfl_zoo/data/images.py): any Pillow mode to 8-bit RGB as displayed, and the
errors that name the file; and its use by MultiLabelImageList."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from cprfl_zoo.data import MultiLabelImageList
from cprfl_zoo.data.images import BACKGROUND, ImageReadError, load_image, to_rgb

ORIENTATION = 0x0112


def _pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image).astype(np.int64)


def _grey(value: int) -> np.ndarray:
    return np.full((3, 5, 3), value)


def test_sixteen_bit_files_are_scaled_not_clipped(tmp_path: Path) -> None:
    # 30000 of 65535 is level 116.7 of 255; Image.open(...).convert("RGB") gives white (255)
    levels = np.full((3, 5), 30000, dtype=np.uint16)
    levels[0, 0], levels[0, 1] = 0, 65535
    expected = np.rint(levels / 65535 * 255).astype(np.int64)
    for name in ("g16.png", "g16.tif", "g16.pgm"):  # modes I;16, I;16, I (Pillow's PGM reader)
        Image.fromarray(levels).save(tmp_path / name)
        with Image.open(tmp_path / name) as raw:
            assert raw.mode in ("I;16", "I")
        out = _pixels(load_image(tmp_path / name))
        np.testing.assert_array_equal(out, np.repeat(expected[..., None], 3, axis=2), name)
    assert expected[1, 1] == 117
    big_endian = Image.fromarray(levels.astype(">u2"))
    assert big_endian.mode == "I;16B"
    assert _pixels(to_rgb(big_endian))[1, 1].tolist() == [117] * 3


def test_thirty_two_bit_integers_outside_sixteen_bits_are_refused(tmp_path: Path) -> None:
    image = Image.fromarray(np.full((3, 5), 70000, dtype=np.int32))
    assert image.mode == "I"
    image.save(tmp_path / "i32.tif")
    with pytest.raises(ImageReadError, match=r"i32\.tif: .*values in \[70000, 70000\].*0\.\.65535"):
        load_image(tmp_path / "i32.tif")
    negative = Image.fromarray(np.full((3, 5), -1, dtype=np.int32))
    with pytest.raises(ImageReadError, match=r"cannot read images\[0\]: mode I: .*\[-1, -1\]"):
        to_rgb(negative, source="images[0]")


def test_float_images_in_unit_range_are_scaled(tmp_path: Path) -> None:
    # a float TIFF in [0, 1]: Pillow's own conversion reads it as 0..255 levels, i.e. black
    values = np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32)
    Image.fromarray(values).save(tmp_path / "unit.tif")
    out = _pixels(load_image(tmp_path / "unit.tif"))[0, :, 0]
    assert out.tolist() == np.rint(values[0] * 255).astype(int).tolist() == [0, 64, 128, 255]
    # values above 1 (up to 255) are Pillow's convention for F: 8-bit levels
    levels = np.array([[0.0, 100.4, 254.6, 2.0]], dtype=np.float32)
    assert _pixels(to_rgb(Image.fromarray(levels)))[0, :, 0].tolist() == [0, 100, 255, 2]


@pytest.mark.parametrize(
    ("value", "message"),
    [(-0.5, r"values in \[-0\.5, 1\]"), (300.0, r"values in \[0, 300\]"), (np.nan, "NaN")],
)
def test_float_images_without_a_display_range_are_refused(
    tmp_path: Path, value: float, message: str
) -> None:
    values = np.array([[0.0, 1.0, value]], dtype=np.float32)
    if value == -0.5:
        values[0, 0] = -0.5
    elif value == 300.0:
        values[0, 1] = 0.0
    Image.fromarray(values).save(tmp_path / "bad.tif")
    with pytest.raises(ImageReadError, match=rf"cannot read image .*bad\.tif: mode F: .*{message}"):
        load_image(tmp_path / "bad.tif")


def _composited(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Reference: out = a * colour + (1 - a) * background, a = alpha / 255."""
    a = alpha[..., None] / 255.0
    return np.rint(a * rgb + (1 - a) * np.array(BACKGROUND)).astype(np.int64)


def test_transparency_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)
    rgba[..., :3] = (200, 0, 0)  # red hidden under alpha 0, shown at 255, half at 128
    rgba[..., 3] = [[0, 255, 128], [64, 0, 255]]
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = _pixels(load_image(tmp_path / "rgba.png"))
    assert BACKGROUND == (255, 255, 255)
    assert out[0, 0].tolist() == [255, 255, 255]  # not the hidden red
    np.testing.assert_allclose(out, _composited(rgba[..., :3], rgba[..., 3]), atol=1)
    # grey with alpha, a palette with a transparent index, premultiplied modes
    la = Image.fromarray(np.stack([np.full((2, 2), 10), np.full((2, 2), 0)], -1).astype(np.uint8))
    assert la.mode == "LA" and _pixels(to_rgb(la))[0, 0].tolist() == [255, 255, 255]
    palette = Image.new("P", (2, 2), 1)
    palette.putpalette([0, 0, 0, 9, 9, 9] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.save(tmp_path / "p.png", transparency=1)
    out = _pixels(load_image(tmp_path / "p.png"))
    assert out[0, 0].tolist() == [0, 0, 0] and out[1, 1].tolist() == [255, 255, 255]
    for mode in ("RGBa", "La", "PA"):
        assert _pixels(to_rgb(Image.new(mode, (2, 2))))[0, 0].tolist() == [255, 255, 255], mode


def test_rgb_with_a_transparent_colour_and_cmyk(tmp_path: Path) -> None:
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0, 0] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "key.png", transparency=(1, 2, 3))
    out = _pixels(load_image(tmp_path / "key.png"))
    assert out[0, 0].tolist() == [255, 255, 255] and out[1, 1].tolist() == [0, 0, 0]
    cmyk = Image.new("CMYK", (2, 2), (255, 0, 0, 0))  # pure cyan
    assert _pixels(to_rgb(cmyk))[0, 0].tolist() == [0, 255, 255]


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int) -> None:
    pixels = np.zeros((2, 4, 3), dtype=np.uint8)
    pixels[:, :2] = (255, 0, 0)
    pixels[0, 0] = (0, 255, 0)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.fromarray(pixels).save(tmp_path / "photo.png", exif=exif)
    # as displayed: 3 = rotated 180 degrees, 6 = 90 clockwise, 8 = 90 counter-clockwise
    turns = {1: 0, 3: 2, 6: -1, 8: 1}[orientation]
    expected = np.rot90(pixels, turns)
    np.testing.assert_array_equal(_pixels(load_image(tmp_path / "photo.png")), expected)
    with Image.open(tmp_path / "photo.png") as image:
        image.load()
        once = to_rgb(image)
    np.testing.assert_array_equal(_pixels(to_rgb(once)), expected)  # no second turn


def test_unreadable_exif_keeps_the_image(tmp_path: Path, monkeypatch, caplog) -> None:
    Image.new("RGB", (3, 2), (5, 6, 7)).save(tmp_path / "x.png")

    def broken(self):
        raise SyntaxError("bad EXIF")

    monkeypatch.setattr(Image.Image, "getexif", broken)
    assert _pixels(load_image(tmp_path / "x.png"))[0, 0].tolist() == [5, 6, 7]
    assert "x.png: ignoring its unreadable EXIF orientation (bad EXIF)" in caplog.text


def test_rgb_in_memory_is_not_copied_and_files_are_detached(tmp_path: Path) -> None:
    image = Image.new("RGB", (3, 2), (1, 2, 3))
    assert to_rgb(image) is image
    image.save(tmp_path / "x.png")
    loaded = load_image(tmp_path / "x.png")
    assert _pixels(loaded).sum() == 6 * 6  # readable after the file was closed


def test_more_pixels_than_the_limit_are_refused_before_decoding(tmp_path: Path, monkeypatch):
    Image.new("L", (12, 12)).save(tmp_path / "wide.png")  # 144 pixels
    Image.new("L", (20, 20)).save(tmp_path / "huge.png")  # 400: more than twice the limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)

    def no_decoding(self):
        raise AssertionError("the image was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageReadError) as info, pytest.warns(Image.DecompressionBombWarning):
        load_image(tmp_path / "wide.png")
    message = str(info.value)
    assert f"cannot read image {tmp_path / 'wide.png'}: 12 x 12 = 144 pixels" in message
    assert "limit of 100 (PIL.Image.MAX_IMAGE_PIXELS)" in message
    assert "PIL.Image.MAX_IMAGE_PIXELS = N" in message and "--max-image-pixels N" in message
    # above twice the limit Pillow itself refuses at open (DecompressionBombError, which is no
    # OSError); it comes back as an ImageReadError naming the file
    with pytest.raises(ImageReadError, match=r"huge\.png: .*decompression bomb.*--max-image"):
        load_image(tmp_path / "huge.png")
    with warnings.catch_warnings():  # warnings raised as errors: the same refusal
        warnings.simplefilter("error")
        with pytest.raises(ImageReadError, match=r"wide\.png: .*decompression bomb.*--max-image"):
            load_image(tmp_path / "wide.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # no limit: decoding is attempted
    with pytest.raises(ImageReadError, match="the image was decoded"):
        load_image(tmp_path / "huge.png")


def test_broken_files_are_named(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as info:
        load_image(tmp_path / "cut.png")
    assert isinstance(info.value, OSError)
    assert (
        str(info.value)
        == f"cannot read image {tmp_path / 'cut.png'}: OSError: image file is truncated"
    )
    assert info.value.path == str(tmp_path / "cut.png")
    assert info.value.reason == "OSError: image file is truncated"
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(ImageReadError, match=r"text\.jpg: UnidentifiedImageError: cannot identify"):
        load_image(tmp_path / "text.jpg")
    with pytest.raises(FileNotFoundError, match=r"none\.png"):
        load_image(tmp_path / "none.png")
    with pytest.raises(ImageReadError, match=rf"cannot read image {tmp_path}: Is a directory"):
        load_image(tmp_path)


def test_the_dataset_decodes_sixteen_bit_images_and_names_bad_ones(tmp_path: Path) -> None:
    Image.fromarray(np.full((4, 4), 30000, dtype=np.uint16)).save(tmp_path / "a.png")
    Image.fromarray(np.full((4, 4), 1e9, dtype=np.float32)).save(tmp_path / "b.tif")
    (tmp_path / "list.txt").write_text("a.png 0\nb.tif 1\n")
    dataset = MultiLabelImageList(tmp_path / "list.txt", tmp_path, num_classes=2)
    image, target = dataset[0]
    assert torch.equal(image, torch.full((3, 4, 4), 117 / 255))
    assert target.tolist() == [1.0, 0.0]
    with pytest.raises(ImageReadError) as info:
        dataset[1]
    assert str(info.value).startswith(
        f"cannot read image {tmp_path / 'b.tif'} (listed at {tmp_path / 'list.txt'}:2): mode F: "
        "float pixel values in [1e+09, 1e+09]"
    )
