"""xviz.render: colormaps, overlays, panels and grids, and atomic PNG writes."""

import os
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from xviz.errors import XvizError
from xviz.render import atomic_write, colorize, enlarge, grid, overlay, panel, save_png, with_colorbar

IMAGE = np.array([[(0, 0, 0), (255, 255, 255)],
                  [(11, 21, 31), (200, 101, 51)]], dtype=np.uint8)
HEAT = np.array([[0.0, 1.0],
                 [1.0, 0.0]], dtype=np.float32)
JET_0, JET_1 = (0, 0, 128), (128, 0, 0)  # jet: (0, 0, 0.5) at 0 and (0.5, 0, 0) at 1, times 255, rounded


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# --- colorize ------------------------------------------------------------------------------------

def test_colorize_jet_endpoints():
    got = colorize(np.array([[0.0, 1.0]]), "jet")
    assert got.dtype == np.uint8 and got.shape == (1, 2, 3)
    assert tuple(got[0, 0]) == JET_0
    assert tuple(got[0, 1]) == JET_1
    # the same, straight from matplotlib
    jet = matplotlib.colormaps["jet"]
    for value, pixel in zip((0.0, 1.0), got[0]):
        assert np.array_equal(pixel, np.round(np.array(jet(value)[:3]) * 255).astype(np.uint8))


def test_colorize_clips_out_of_range_values():
    got = colorize(np.array([[-3.0, 7.0]]), "jet")
    assert tuple(got[0, 0]) == JET_0 and tuple(got[0, 1]) == JET_1


def test_colorize_signed_maps_zero_to_the_middle():
    got = colorize(np.array([[-1.0, 0.0, 1.0]]), "bwr", signed=True)
    bwr = matplotlib.colormaps["bwr"]
    middle = np.round(np.array(bwr(0.5)[:3]) * 255).astype(np.uint8)
    assert tuple(got[0, 0]) == (0, 0, 255)  # -1: blue end
    assert np.array_equal(got[0, 1], middle)  # 0: white-ish middle
    assert tuple(got[0, 2]) == (255, 0, 0)  # +1: red end
    # an unsigned map puts 0 at the start of the colormap instead
    assert tuple(colorize(np.array([[0.0]]), "bwr")[0, 0]) == (0, 0, 255)


def test_unknown_colormap():
    with pytest.raises(XvizError, match="no-such-cmap"):
        colorize(np.zeros((2, 2)), "no-such-cmap")
    with pytest.raises(XvizError, match="no-such-cmap"):
        overlay(IMAGE, HEAT, cmap="no-such-cmap")


# --- overlay -------------------------------------------------------------------------------------

def test_overlay_alpha_0_is_the_image():
    got = overlay(IMAGE, HEAT, alpha=0.0)
    assert got.dtype == np.uint8
    assert np.array_equal(got, IMAGE)


def test_overlay_alpha_1_is_the_colorized_heatmap():
    got = overlay(IMAGE, HEAT, alpha=1.0)
    assert np.array_equal(got, colorize(HEAT))
    assert tuple(got[0, 0]) == JET_0 and tuple(got[0, 1]) == JET_1


def test_overlay_alpha_half_is_the_rounded_average():
    # (image + colour) / 2, halves rounded up:
    #   (0,0,0)+(0,0,128) -> (0,0,64);     (255,255,255)+(128,0,0) -> (191.5,127.5,127.5) -> (192,128,128)
    #   (11,21,31)+(128,0,0) -> (69.5,10.5,15.5) -> (70,11,16);  (200,101,51)+(0,0,128) -> (100,50.5,89.5) -> (100,51,90)
    expected = np.array([[(0, 0, 64), (192, 128, 128)],
                         [(70, 11, 16), (100, 51, 90)]], dtype=np.uint8)
    assert np.array_equal(overlay(IMAGE, HEAT, alpha=0.5), expected)
    assert np.array_equal(overlay(Image.fromarray(IMAGE), HEAT, alpha=0.5), expected)  # a PIL image too


def test_overlay_resizes_the_heatmap_to_the_image():
    image = np.full((6, 10, 3), 40, dtype=np.uint8)
    got = overlay(image, np.ones((3, 5), dtype=np.float32), alpha=1.0)
    assert got.shape == (6, 10, 3)
    assert (got == np.array(JET_1, dtype=np.uint8)).all()


def test_overlay_of_grayscale_pil_image():
    gray = Image.fromarray(np.full((2, 2), 100, dtype=np.uint8), "L")
    got = overlay(gray, np.zeros((2, 2)), alpha=0.0)
    assert got.shape == (2, 2, 3) and (got == 100).all()


@pytest.mark.parametrize("alpha", [-0.01, 1.01, 2.0])
def test_overlay_alpha_outside_unit_interval(alpha):
    with pytest.raises(XvizError, match="alpha"):
        overlay(IMAGE, HEAT, alpha=alpha)


def test_enlarge_repeats_pixels_by_an_integer_factor():
    small = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    big = enlarge(small, min_side=5)  # factor ceil(5 / 2) = 3
    assert big.shape == (6, 9, 3)
    assert np.array_equal(big[::3, ::3], small)
    assert np.array_equal(big[2, 8], small[0, 2])
    large = np.zeros((300, 400, 3), dtype=np.uint8)
    assert enlarge(large, min_side=224) is large


# --- figures -------------------------------------------------------------------------------------

def _noise(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _assert_plausible_size(size, figsize, dpi):
    """About ``figsize * dpi`` pixels: a tight bounding box may trim margins or add its padding."""
    for got, inches in zip(size, figsize):
        assert 0.6 * inches * dpi <= got <= (inches + 0.5) * dpi, (size, figsize, dpi)


def test_panel_saved_as_png(tmp_path):
    heat = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16)
    fig = panel(_noise(16, 16), heat, title="bird 0.93")
    assert [ax.get_title() for ax in fig.axes[:3]] == ["image", "heatmap", "overlay"]
    assert len(fig.axes) == 4 and fig.axes[3].get_ylim() == (0.0, 1.0)  # the colourbar: 0 to 1
    path = save_png(fig, tmp_path / "out" / "panel.png", dpi=50)
    assert path == tmp_path / "out" / "panel.png"
    assert not plt.fignum_exists(fig.number)  # save_png closed it
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.mode in ("RGB", "RGBA")
        _assert_plausible_size(img.size, (9.8, 3.4), dpi=50)  # three panels and the colourbar
        assert img.size[0] > 2 * img.size[1]  # three panels side by side
        pixels = np.asarray(img.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # something was drawn
    assert sorted(os.listdir(tmp_path / "out")) == ["panel.png"]


def test_grid_saved_as_png(tmp_path):
    images = [_noise(12, 12, seed) for seed in range(5)]
    heats = [np.full((12, 12), i / 4, dtype=np.float32) for i in range(5)]
    fig = grid(images, heats, titles=[f"img{i}" for i in range(5)], ncols=2)
    assert len(fig.axes) == 7  # 3 rows x 2 columns, the last one blank, and the colourbar
    path = save_png(fig, tmp_path / "grid.png", dpi=40)
    assert not plt.fignum_exists(fig.number)
    with Image.open(path) as img:
        assert img.format == "PNG"
        assert img.mode in ("RGB", "RGBA")
        _assert_plausible_size(img.size, (2.6 * 2 + 0.6, 2.8 * 3), dpi=40)
        assert img.size[1] > img.size[0]  # three rows of two
    assert sorted(os.listdir(tmp_path)) == ["grid.png"]


def test_grid_of_nothing():
    with pytest.raises(XvizError):
        grid([], [])


def test_figure_is_closed_even_when_saving_fails(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    fig = panel(_noise(8, 8), np.zeros((8, 8)))
    with pytest.raises(OSError):
        save_png(fig, tmp_path / "file" / "panel.png")
    assert not plt.fignum_exists(fig.number)


# --- writing files -------------------------------------------------------------------------------

def test_save_png_array_round_trip(tmp_path):
    picture = _noise(7, 13)
    path = save_png(picture, tmp_path / "a.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == "RGB" and img.size == (13, 7)
        assert np.array_equal(np.asarray(img), picture)


def test_save_png_pil_image_round_trip(tmp_path):
    picture = _noise(9, 5, seed=3)
    path = save_png(Image.fromarray(picture), tmp_path / "b.png")
    with Image.open(path) as img:
        assert np.array_equal(np.asarray(img.convert("RGB")), picture)


def test_save_png_overwrites(tmp_path):
    path = tmp_path / "c.png"
    save_png(_noise(4, 4, seed=1), path)
    save_png(_noise(4, 4, seed=2), path)
    with Image.open(path) as img:
        assert np.array_equal(np.asarray(img), _noise(4, 4, seed=2))
    assert sorted(os.listdir(tmp_path)) == ["c.png"]


@pytest.mark.parametrize("error", [ValueError("disk full"), KeyboardInterrupt()])
def test_atomic_write_failure_keeps_the_old_file(tmp_path, error):
    path = tmp_path / "result.txt"
    path.write_text("previous content")

    def writer(tmp):
        with open(tmp, "w") as f:
            f.write("half of the new")
        raise error

    with pytest.raises(type(error)):
        atomic_write(path, writer)
    assert path.read_text() == "previous content"
    assert sorted(os.listdir(tmp_path)) == ["result.txt"]  # no temporary file left behind


def test_atomic_write_failure_without_previous_file(tmp_path):
    def writer(tmp):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "new" / "x.png", writer)
    assert os.listdir(tmp_path / "new") == []


def test_atomic_write_success(tmp_path):
    path = atomic_write(tmp_path / "sub" / "dir" / "out.txt", lambda tmp: Path(tmp).write_text("hello"))
    assert path.read_text() == "hello"
    assert sorted(os.listdir(path.parent)) == ["out.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # ordinary permissions, not mkstemp's 0600


def test_signed_maps_default_to_a_diverging_colormap_white_at_zero():
    """A signed attribution is drawn blue-white-red, zero white; a user's --cmap still wins."""
    heat = np.array([[-1.0, 0.0, 1.0]], dtype=np.float32)
    rgb = colorize(heat, None, signed=True)
    assert rgb[0, 1].min() >= 250  # zero is white, not jet's green
    assert rgb[0, 0, 2] > 200 and rgb[0, 0, 0] < 60 and rgb[0, 2, 0] > 200 and rgb[0, 2, 2] < 60  # blue, red
    assert tuple(colorize(heat, "jet", signed=True)[0, 1]) == tuple(colorize(np.array([[0.5]]), "jet")[0, 0])
    unsigned = colorize(np.array([[0.0, 1.0]], dtype=np.float32), None)
    assert (unsigned == colorize(np.array([[0.0, 1.0]], dtype=np.float32), "jet")).all()


def test_signed_panel_has_a_colourbar_from_minus_one_to_one():
    heat = np.linspace(-1, 1, 64, dtype=np.float32).reshape(8, 8)
    fig = panel(_noise(8, 8), heat, signed=True)
    bar = fig.axes[3]
    assert bar.get_ylim() == (-1.0, 1.0) and list(bar.get_yticks()) == [-1, 0, 1]
    plt.close(fig)


def test_grid_has_one_colourbar_beside_the_overlays():
    fig = grid([_noise(8, 8)] * 3, [np.ones((8, 8), np.float32)] * 3, ncols=3)
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 3 and len(fig.axes) == 4
    assert fig.axes[-1].get_position().x0 > max(ax.get_position().x1 for ax in images)  # beside, not over
    plt.close(fig)


@pytest.mark.parametrize("signed", [False, True])
def test_with_colorbar_puts_the_colour_scale_right_of_the_overlay(signed):
    picture = _noise(100, 80)
    out = with_colorbar(picture, None, signed)
    assert out.shape == (100, 130, 3) and (out[:, :80] == picture).all()
    strip = out[:, 86]  # the colour strip: the top is the map's maximum, the bottom its minimum
    low = -1.0 if signed else 0.0
    assert (strip[0] == colorize(np.array([[1.0]]), None, signed)[0, 0]).all()
    assert (strip[-1] == colorize(np.array([[low]]), None, signed)[0, 0]).all()
