"""Image decoding (every mode a user folder holds) and view replay (the teacher's view, bit for bit)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdiqa.data import images
from kdiqa.data.images import load_image
from kdiqa.data.views import ViewParams, ViewSampler
from kdiqa.errors import ConfigError, DataError

# --------------------------------------------------------------------------------------------------
# decoding


def test_grey_l_becomes_rgb(tmp_path: Path):
    path = tmp_path / "grey.png"
    Image.fromarray(np.array([[0, 128], [200, 255]], dtype=np.uint8), mode="L").save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (2, 2)
    assert np.asarray(out)[1, 0].tolist() == [200, 200, 200]


def test_16bit_grey_is_scaled_not_clipped(tmp_path: Path):
    values = np.array([[0, 257, 32896], [65535, 1000, 51400]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as check:
        assert check.mode.startswith("I;16")  # the test really exercises the 16-bit path
    out = np.asarray(load_image(path))
    expected = np.rint(values / 257.0).astype(np.uint8)  # 65535 -> 255, 32896 -> 128
    np.testing.assert_array_equal(out[..., 0], expected)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    assert out[1, 0, 0] == 255 and out[0, 2, 0] == 128


def test_32bit_modes_infer_their_range():
    as_16bit = Image.fromarray(np.array([[0, 65535, 32896]], dtype=np.int32))  # mode I, e.g. a 16-bit PGM
    assert np.asarray(images.to_rgb(as_16bit))[0, :, 0].tolist() == [0, 255, 128]
    unit_float = Image.fromarray(np.array([[0.0, 1.0, 0.5]], dtype=np.float32))  # mode F in [0, 1]
    assert np.asarray(images.to_rgb(unit_float))[0, :, 0].tolist() == [0, 255, 128]


def test_rgba_is_composited_on_white(tmp_path: Path):
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[0, 0] = [255, 0, 0, 255]  # opaque red
    rgba[0, 1] = [0, 0, 0, 0]  # fully transparent black: hidden colour must not leak
    rgba[0, 2] = [0, 0, 0, 128]  # half-transparent black over white
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    out = np.asarray(load_image(path))
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[0, 1].tolist() == [255, 255, 255]
    assert abs(int(out[0, 2, 0]) - 127) <= 1


def test_cmyk_converts(tmp_path: Path):
    cmyk = Image.new("CMYK", (3, 1))
    cmyk.putpixel((0, 0), (0, 0, 0, 0))  # no ink: white
    cmyk.putpixel((1, 0), (255, 0, 0, 0))  # full cyan
    cmyk.putpixel((2, 0), (0, 0, 0, 255))  # full black
    path = tmp_path / "print.tif"
    cmyk.save(path)
    out = np.asarray(load_image(path))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [0, 255, 255]
    assert out[0, 2].tolist() == [0, 0, 0]


def test_palette_with_transparency(tmp_path: Path):
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 255] + [0, 255, 0] + [0, 0, 0] * 254)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    path = tmp_path / "icon.gif"
    pal.save(path, transparency=1)
    out = np.asarray(load_image(path))
    assert out[0, 0].tolist() == [0, 0, 255]
    assert out[0, 1].tolist() == [255, 255, 255]  # the transparent index shows the white background

    plain = tmp_path / "plain.png"
    pal.save(plain)
    assert np.asarray(load_image(plain))[0, 1].tolist() == [0, 255, 0]


def test_exif_orientation_is_honoured(tmp_path: Path):
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20] = 255  # left half white in the stored (sideways) pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    out = load_image(path)
    assert out.size == (20, 40)  # (width, height) swapped
    arr = np.asarray(out).astype(int)
    assert arr[:15].mean() > 200 and arr[25:].mean() < 50  # stored-left is now on top


def test_decompression_bomb_refused(tmp_path: Path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (64, 64)).save(path)
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    with pytest.raises(DataError, match=r"big\.png: image is 64x64 = 4096 pixels, over the limit"):
        load_image(path)


def test_pillow_bomb_error_becomes_data_error(tmp_path: Path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow itself raises at 2x this
    with pytest.raises(DataError, match=r"big\.png: refused as a possible decompression bomb"):
        load_image(path)


def test_truncated_file_names_the_file(tmp_path: Path):
    path = tmp_path / "cut.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.jpg: cannot decode image"):
        load_image(path)


def test_missing_and_non_image_files(tmp_path: Path):
    with pytest.raises(DataError, match=r"nope\.png: image file not found"):
        load_image(tmp_path / "nope.png")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(DataError, match=r"notes\.jpg: not an image"):
        load_image(text)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to count open files")
def test_file_handles_are_closed(tmp_path: Path):
    path = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(path)
    before = len(os.listdir("/proc/self/fd"))
    kept = [load_image(path) for _ in range(20)]
    assert len(os.listdir("/proc/self/fd")) <= before
    assert all(np.asarray(im).shape == (8, 8, 3) for im in kept)  # usable after the file is closed


# --------------------------------------------------------------------------------------------------
# views


@pytest.fixture
def photo() -> Image.Image:
    rng = np.random.default_rng(3)
    return Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))  # 64 wide, 48 high


def make_train_sampler(**kwargs) -> ViewSampler:
    args = {"size": 16, "train": True, "scale": (0.2, 0.8), "ratio": (0.75, 1.33), "flip": True}
    args.update(kwargs)
    return ViewSampler(**args)


def test_replay_is_bit_identical(photo):
    sampler = make_train_sampler()
    tensor, params = sampler(photo, np.random.default_rng(0))
    assert tensor.dtype == torch.float32 and tensor.shape == (3, 16, 16)
    assert 0.0 <= tensor.min() and tensor.max() <= 1.0
    assert torch.equal(sampler.apply(photo, params), tensor)
    restored = ViewParams.from_array(params.to_array())
    assert restored == params
    assert params.to_array().dtype == np.float64 and params.to_array().shape == (6,)
    # a fresh sampler with the same settings (e.g. in the distillation process) replays it too
    assert torch.equal(make_train_sampler().apply(photo, restored), tensor)


def test_seeded_rng_is_deterministic(photo):
    sampler = make_train_sampler()
    first = [sampler.sample(photo.size, np.random.default_rng(7)) for _ in range(2)]
    assert first[0] == first[1]
    draws = [sampler.sample(photo.size, rng) for rng in [np.random.default_rng(7)] for _ in range(20)]
    assert len({p.crop for p in draws}) > 1 and {p.flip for p in draws} == {False, True}


def test_eval_view_is_plain_resize(photo):
    sampler = ViewSampler(size=(12, 20), train=False)
    params = sampler.sample(photo.size, np.random.default_rng(0))
    assert params == ViewSampler.eval_params() == ViewParams((0.0, 0.0, 1.0, 1.0), False, 0)
    expected = np.asarray(photo.resize((20, 12), Image.Resampling.BILINEAR))
    got = (sampler.apply(photo, params) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(got, expected)


def test_flip_is_a_mirror(photo):
    sampler = make_train_sampler()
    params = sampler.sample(photo.size, np.random.default_rng(1))
    plain = ViewParams(params.crop, flip=False, seed=params.seed)
    mirrored = ViewParams(params.crop, flip=True, seed=params.seed)
    assert torch.equal(sampler.apply(photo, mirrored), sampler.apply(photo, plain).flip(-1))


def test_crops_stay_inside_the_image_and_respect_scale():
    sampler = ViewSampler(size=8, train=True, scale=(0.1, 0.5), ratio=(0.5, 2.0))
    rng = np.random.default_rng(5)
    for width, height in [(64, 48), (30, 200), (7, 5)]:
        for _ in range(50):
            x0, y0, x1, y1 = sampler.sample((width, height), rng).crop
            assert 0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0
            # boxes are whole pixels of the sampled image
            assert np.allclose(np.array([x0, x1]) * width, np.round(np.array([x0, x1]) * width))
            if (width, height) == (64, 48):
                assert 0.05 <= (x1 - x0) * (y1 - y0) <= 0.6  # area within scale, up to pixel rounding


def test_default_train_view_is_the_whole_image(photo):
    params = ViewSampler(size=16, train=True).sample(photo.size, np.random.default_rng(0))
    assert params.crop == (0.0, 0.0, 1.0, 1.0) and params.flip is False


def test_view_replays_on_a_smaller_copy(photo):
    """Normalised boxes let a view sampled on one release of an image replay on its half-size copy."""
    sampler = make_train_sampler(size=8, scale=(0.5, 0.5), ratio=(1.0, 1.0), flip=False)
    params = sampler.sample(photo.size, np.random.default_rng(2))
    half = photo.resize((32, 24), Image.Resampling.BOX)
    full_view, half_view = sampler.apply(photo, params), sampler.apply(half, params)
    assert (full_view - half_view).abs().mean() < 0.1  # same content, resampled


def test_non_rgb_input_is_converted(photo):
    sampler = ViewSampler(size=8, train=False)
    grey = photo.convert("L")
    out = sampler.apply(grey, sampler.eval_params())
    assert out.shape == (3, 8, 8) and torch.equal(out[0], out[1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        # scale and ratio come from a recipe and are checked there (test_config.py)
        ({"size": 0}, "size"),
        ({"size": (16, 16, 3)}, "size"),
        ({"interpolation": "cubic"}, "interpolation 'cubic'"),
    ],
)
def test_sampler_arguments_are_validated(kwargs, message):
    args = {"size": 16, "train": True}
    args.update(kwargs)
    with pytest.raises(ConfigError, match=message):
        ViewSampler(**args)


def test_bad_view_params_are_refused():
    with pytest.raises(DataError, match="crop"):
        ViewParams((0.5, 0.0, 0.2, 1.0), False, 0)
    with pytest.raises(DataError, match="expected 6 numbers"):
        ViewParams.from_array([0.0, 0.0, 1.0, 1.0, 0.0])
    with pytest.raises(DataError, match="flip must be 0 or 1"):
        ViewParams.from_array([0.0, 0.0, 1.0, 1.0, 0.5, 3.0])
    with pytest.raises(DataError, match="seed must be an integer"):
        ViewParams.from_array([0.0, 0.0, 1.0, 1.0, 1.0, 3.5])
