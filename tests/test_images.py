"""xviz.images: reading any common image as upright 8-bit RGB, and the model's preprocessing."""

import numpy as np
import pytest
import torch
from PIL import Image

from xviz.errors import XvizError
from xviz.images import Preprocessing, list_images, read_image


def _pixels(img):
    return np.asarray(img, dtype=np.int16)


def _stored_mode(path):
    with Image.open(path) as img:
        return img.mode


def _pattern(w=24, h=16):
    """An RGB image with four flat quadrants (flat regions survive JPEG almost unchanged)."""
    a = np.zeros((h, w, 3), dtype=np.uint8)
    a[: h // 2, : w // 2] = (255, 0, 0)
    a[: h // 2, w // 2:] = (0, 255, 0)
    a[h // 2:, : w // 2] = (0, 0, 255)
    a[h // 2:, w // 2:] = (250, 250, 250)
    return a


# --- formats -------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix,options,lossless", [
    (".png", {}, True),
    (".bmp", {}, True),
    (".tif", {}, True),
    (".tiff", {"compression": "tiff_lzw"}, True),
    (".webp", {"lossless": True}, True),
    (".jpg", {"quality": 95}, False),
    (".jpeg", {"quality": 95}, False),
])
def test_read_image_formats(tmp_path, suffix, options, lossless):
    a = _pattern(24, 16)
    path = tmp_path / f"img{suffix}"
    Image.fromarray(a).save(path, **options)
    img = read_image(path)
    assert img.mode == "RGB"
    assert img.size == (24, 16)
    got = _pixels(img)
    if lossless:
        assert np.array_equal(got, a)
    else:  # JPEG: check the centre of each flat quadrant, away from block edges
        for y, x in [(4, 6), (4, 18), (12, 6), (12, 18)]:
            assert np.abs(got[y, x] - a[y, x].astype(np.int16)).max() <= 12, (y, x, got[y, x], a[y, x])


def test_read_image_accepts_str_path(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(_pattern()).save(path)
    assert read_image(str(path)).size == (24, 16)


# --- modes ---------------------------------------------------------------------------------------

def test_grayscale_becomes_gray_rgb(tmp_path):
    a = np.tile(np.array([0, 37, 128, 255], dtype=np.uint8), (8, 2))  # 8 x 8
    Image.fromarray(a, "L").save(tmp_path / "g.png")
    got = _pixels(read_image(tmp_path / "g.png"))
    assert got.shape == (8, 8, 3)
    for c in range(3):
        assert np.array_equal(got[..., c], a)


def test_grayscale_jpeg_and_gray_with_alpha(tmp_path):
    Image.fromarray(np.full((16, 16), 77, dtype=np.uint8), "L").save(tmp_path / "g.jpg")
    assert tuple(_pixels(read_image(tmp_path / "g.jpg"))[5, 5]) == (77, 77, 77)
    la = np.zeros((8, 8, 2), dtype=np.uint8)
    la[0, 0] = (40, 255)  # opaque dark gray stays; the rest is transparent -> white
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    got = _pixels(read_image(tmp_path / "la.png"))
    assert tuple(got[0, 0]) == (40, 40, 40)
    assert tuple(got[4, 4]) == (255, 255, 255)


def test_one_bit_becomes_black_and_white(tmp_path):
    bits = np.zeros((8, 10), dtype=bool)
    bits[:, 5:] = True
    Image.fromarray(bits).convert("1").save(tmp_path / "b.png")
    assert _stored_mode(tmp_path / "b.png") == "1"
    got = _pixels(read_image(tmp_path / "b.png"))
    assert (got[:, :5] == 0).all()
    assert (got[:, 5:] == 255).all()


def test_rgba_is_composited_on_white(tmp_path):
    a = np.zeros((8, 8, 4), dtype=np.uint8)
    a[0, 0] = (10, 20, 30, 0)  # fully transparent -> white, whatever its colour
    a[0, 1] = (10, 20, 30, 255)  # opaque -> unchanged
    a[0, 2] = (0, 0, 0, 128)  # half black over white -> 255 * (1 - 128/255) = 127
    a[0, 3] = (200, 0, 100, 51)  # 0.2 alpha: 200*0.2+255*0.8 = 244, 0+204 = 204, 20+204 = 224
    Image.fromarray(a, "RGBA").save(tmp_path / "t.png")
    got = _pixels(read_image(tmp_path / "t.png"))
    assert tuple(got[0, 0]) == (255, 255, 255)
    assert tuple(got[0, 1]) == (10, 20, 30)
    assert np.abs(got[0, 2] - 127).max() <= 1
    assert np.abs(got[0, 3] - np.array([244, 204, 224])).max() <= 1
    assert tuple(got[5, 5]) == (255, 255, 255)  # the zero-initialised (transparent) rest


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (8, 8), 0)
    img.putpalette([255, 0, 0, 0, 0, 200] + [0] * (3 * 254))  # 0: red, 1: dark blue
    img.putpixel((3, 4), 1)
    img.save(tmp_path / "p.png", transparency=0)  # index 0 (red) is transparent
    assert _stored_mode(tmp_path / "p.png") == "P"
    got = _pixels(read_image(tmp_path / "p.png"))
    assert tuple(got[0, 0]) == (255, 255, 255)  # transparent red -> white, not red
    assert tuple(got[4, 3]) == (0, 0, 200)


def test_palette_without_transparency(tmp_path):
    img = Image.new("P", (8, 8), 1)
    img.putpalette([255, 0, 0, 0, 0, 200] + [0] * (3 * 254))
    img.save(tmp_path / "p.gif.png")
    assert tuple(_pixels(read_image(tmp_path / "p.gif.png"))[2, 2]) == (0, 0, 200)


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path):
    a = np.zeros((8, 8), dtype=np.uint16)
    a[0, 0], a[0, 1], a[0, 2], a[0, 3] = 65535, 32768, 257, 1000
    Image.fromarray(a).save(tmp_path / "deep.png")
    assert _stored_mode(tmp_path / "deep.png").startswith("I")
    got = _pixels(read_image(tmp_path / "deep.png"))
    assert tuple(got[0, 0]) == (255, 255, 255)  # clipping would give 255 too, but ...
    assert np.abs(got[0, 1] - 128).max() <= 1  # ... clipping gives 255 here
    assert tuple(got[0, 2]) == (1, 1, 1)  # 257 / 65535 * 255 = 1
    assert tuple(got[0, 3]) == (4, 4, 4)  # 1000 / 65535 * 255 = 3.9
    assert tuple(got[7, 7]) == (0, 0, 0)


def test_cmyk_jpeg(tmp_path):
    img = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # red
    img.paste((0, 0, 0, 255), (8, 0, 16, 16))  # right half: black via K
    img.save(tmp_path / "cmyk.jpg", quality=95)
    assert _stored_mode(tmp_path / "cmyk.jpg") == "CMYK"
    out = read_image(tmp_path / "cmyk.jpg")
    assert out.mode == "RGB" and out.size == (16, 16)
    got = _pixels(out)
    assert np.abs(got[4, 3] - np.array([255, 0, 0])).max() <= 10
    assert np.abs(got[4, 12] - np.array([0, 0, 0])).max() <= 10


# --- EXIF orientation ----------------------------------------------------------------------------

def test_exif_orientation_6_is_rotated_upright(tmp_path):
    # stored 48 wide x 24 high; top-left 8x8 block red, rest gray
    a = np.full((24, 48, 3), 128, dtype=np.uint8)
    a[:8, :8] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(a).save(tmp_path / "phone.jpg", exif=exif, quality=95)

    img = read_image(tmp_path / "phone.jpg")
    assert img.size == (24, 48)  # width and height swapped
    got = _pixels(img)
    # a 90 degree clockwise turn moves the stored top-left corner to the top-right
    assert np.abs(got[3, 20] - np.array([255, 0, 0])).max() <= 20
    assert np.abs(got[3, 3] - 128).max() <= 20
    assert np.abs(got[44, 3] - 128).max() <= 20
    assert np.abs(got[44, 20] - 128).max() <= 20


def test_exif_orientation_1_is_untouched(tmp_path):
    a = np.full((24, 48, 3), 128, dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 1
    Image.fromarray(a).save(tmp_path / "plain.jpg", exif=exif)
    assert read_image(tmp_path / "plain.jpg").size == (48, 24)


# --- bad inputs ----------------------------------------------------------------------------------

def _real_file(tmp_path, suffix):
    rng = np.random.default_rng(0)
    path = tmp_path / f"full{suffix}"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    return path.read_bytes()


def _assert_error_names(path, *words):
    with pytest.raises(XvizError) as info:
        read_image(path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message.lower()
    return message


def test_missing_file(tmp_path):
    _assert_error_names(tmp_path / "nope.jpg", "not exist")


def test_folder(tmp_path):
    (tmp_path / "pics.jpg").mkdir()
    _assert_error_names(tmp_path / "pics.jpg", "folder")


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "x.jpg"
    path.write_text("this is not a JPEG\n" * 10)
    _assert_error_names(path, "not an image")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    _assert_error_names(path)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_file(tmp_path, suffix):
    data = _real_file(tmp_path, suffix)
    path = tmp_path / f"half{suffix}"
    path.write_bytes(data[: len(data) // 2])
    _assert_error_names(path, "truncated")


@pytest.mark.parametrize("side", [1, 4])
def test_too_small(tmp_path, side):
    path = tmp_path / f"tiny{side}.png"
    Image.new("RGB", (side, side), (1, 2, 3)).save(path)
    _assert_error_names(path, "too small", f"{side}x{side}")


def test_smallest_accepted_size(tmp_path):
    path = tmp_path / "eight.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(path)
    assert read_image(path).size == (8, 8)


def test_decompression_limit_restored_after_error(tmp_path):
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(XvizError):
        read_image(tmp_path / "missing.png")
    path = tmp_path / "tiny.png"
    Image.new("RGB", (2, 2)).save(path)
    with pytest.raises(XvizError):
        read_image(path)
    assert Image.MAX_IMAGE_PIXELS == before


# --- list_images ---------------------------------------------------------------------------------

def test_list_images_expands_folders_sorted(tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    for name in ["c.webp", "a.jpg", "b.PNG", "d.tiff", "e.bmp", "f.jpeg", "g.tif"]:
        (folder / name).write_bytes(b"")
    (folder / "notes.txt").write_text("x")
    (folder / "noext").write_text("x")
    single = tmp_path / "z.png"
    single.write_bytes(b"")

    got = list_images([str(single), folder])
    assert got == [single] + [folder / n for n in ["a.jpg", "b.PNG", "c.webp", "d.tiff", "e.bmp", "f.jpeg", "g.tif"]]


def test_list_images_is_not_recursive(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deep.png").write_bytes(b"")
    (tmp_path / "top.png").write_bytes(b"")
    assert list_images([tmp_path]) == [tmp_path / "top.png"]


def test_list_images_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(XvizError, match="empty"):
        list_images([tmp_path / "empty"])
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("x")
    with pytest.raises(XvizError, match="docs"):
        list_images([tmp_path / "docs"])


# --- Preprocessing -------------------------------------------------------------------------------

def _weights():
    from torchvision.models import ResNet50_Weights, VGG16_Weights

    return {"resnet50": ResNet50_Weights.DEFAULT, "vgg16": VGG16_Weights.DEFAULT}


@pytest.mark.parametrize("name", ["resnet50", "vgg16"])
def test_from_transforms_reads_the_weights_transforms(name):
    t = _weights()[name].transforms()
    p = Preprocessing.from_transforms(t)
    assert p.resize == t.resize_size[0]
    assert p.crop == t.crop_size[0]
    assert p.mean == tuple(t.mean)
    assert p.std == tuple(t.std)
    assert p.interpolation == "bilinear" == t.interpolation.value
    # the values themselves, against the torchvision documentation
    assert (p.resize, p.crop) == {"resnet50": (232, 224), "vgg16": (256, 224)}[name]


@pytest.mark.parametrize("name", ["resnet50", "vgg16"])
@pytest.mark.parametrize("size", [(300, 200), (640, 480), (200, 300), (333, 250), (251, 333), (2000, 1500)])
def test_tensor_equals_torchvision_transform(name, size):
    """(333, 250): torchvision truncates the long side (340.9 -> 340); (2000, 1500): a >6x downscale,
    where PIL's reducing_gap would change pixels."""
    t = _weights()[name].transforms()
    p = Preprocessing.from_transforms(t)
    rng = np.random.default_rng(sum(size))
    pil = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    ours, theirs = p.tensor(pil), t(pil)
    assert ours.dtype == theirs.dtype == torch.float32
    assert ours.shape == theirs.shape == (3, 224, 224)
    assert (ours - theirs).abs().max().item() <= 1e-5


@pytest.mark.parametrize("size,expected", [((300, 200), (384, 256)), ((333, 250), (340, 256)),
                                           ((250, 333), (256, 340)), ((256, 256), (256, 256))])
def test_view_resizes_shorter_side_like_torchvision(size, expected):
    p = Preprocessing(resize=256, crop=None, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert p.view(Image.new("RGB", size)).size == expected


def test_view_center_crop_and_normalize_by_hand():
    a = np.arange(6 * 4 * 3, dtype=np.uint8).reshape(4, 6, 3)  # 6 wide, 4 high
    p = Preprocessing(resize=None, crop=2, mean=(0.1, 0.2, 0.3), std=(0.5, 0.25, 2.0))
    view = p.view(Image.fromarray(a))
    assert view.size == (2, 2)
    assert np.array_equal(np.asarray(view), a[1:3, 2:4])  # top = (4-2)/2 = 1, left = (6-2)/2 = 2
    x = p.tensor(Image.fromarray(a))
    assert x.shape == (3, 2, 2)
    # pixel (row 1, col 2), channel 2: value 1*18 + 2*3 + 2 = 26 -> (26/255 - 0.3) / 2.0
    assert x[2, 0, 0].item() == pytest.approx((26 / 255 - 0.3) / 2.0, abs=1e-6)
    assert x[0, 1, 1].item() == pytest.approx((a[2, 3, 0] / 255 - 0.1) / 0.5, abs=1e-6)


def test_preprocessing_dict_round_trip():
    p = Preprocessing(resize=72, crop=64, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4), interpolation="bicubic")
    assert Preprocessing.from_dict(p.to_dict()) == p


def test_folder_named_like_an_image_is_not_listed(tmp_path):
    from xviz.images import list_images

    (tmp_path / "album.jpg").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "real.png")
    assert [p.name for p in list_images([tmp_path])] == ["real.png"]


def test_crop_larger_than_image_pads_like_torchvision():
    import torchvision.transforms as T

    from xviz.images import Preprocessing

    pre = Preprocessing(resize=None, crop=12, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8))
    ref = T.Compose([T.CenterCrop(12), T.ToTensor(), T.Normalize((0.5,) * 3, (0.25,) * 3)])(img)
    assert (pre.tensor(img) - ref).abs().max() <= 1e-6
