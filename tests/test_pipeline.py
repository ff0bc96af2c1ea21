"""The folder pipeline of explain: decoding in DataLoader workers, files written on threads, input order
kept, an unreadable file reported in its place, JPEGs decoded at a reduced scale when the resize allows."""

import json
import re
import threading
import time

import numpy as np
import pytest
from PIL import Image

import xviz
from xviz.data.synthetic import sample
from xviz.errors import XvizError
from xviz.explainer import explain_batches
from xviz.images import read_image
from xviz.outputs import BackgroundWrites


def _folder(tmp_path, count, broken=()):
    """``count`` pictures (PNG and JPEG alternating) named in input order, with text files at ``broken``."""
    folder = tmp_path / "pictures"
    folder.mkdir()
    paths = []
    for i in range(count):
        path = folder / f"p{i:02d}.{'jpg' if i % 2 else 'png'}"
        if i in broken:
            path.write_text("not a picture")
        else:
            Image.fromarray(sample(i, "test").image).save(path)
        paths.append(path)
    return folder, paths


def test_workers_give_the_maps_order_and_skips_of_the_main_process(tmp_path, demo):
    _, paths = _folder(tmp_path, 7, broken={3})
    runs = {workers: list(explain_batches(demo, paths, ["gradcam", "saliency"], batch_size=2, workers=workers,
                                          skip_unreadable=True)) for workers in (0, 2)}
    inline, workers = runs[0], runs[2]
    assert [b.names for b in workers] == [[str(paths[0]), str(paths[1])], [str(paths[2])],
                                          [str(paths[4]), str(paths[5])], [str(paths[6])]]
    assert [len(b.skipped) for b in workers] == [0, 1, 0, 0]  # reported in the batch the file belongs to
    assert workers[1].skipped[0][0] == str(paths[3]) and "is not an image xviz can read" in workers[1].skipped[0][1]
    for a, b in zip(inline, workers):
        assert a.names == b.names and a.skipped == b.skipped
        for x, y in zip(a.views, b.views):
            assert isinstance(y, Image.Image) and np.array_equal(np.asarray(x), np.asarray(y))
        for ea, eb in zip(a.explanations, b.explanations):
            assert ea.method == eb.method
            np.testing.assert_allclose(ea.maps, eb.maps, atol=1e-6)


def test_an_unreadable_file_is_the_error_unless_skipped(tmp_path, demo):
    _, paths = _folder(tmp_path, 5, broken={4})
    with pytest.raises(XvizError, match=r"^`.*p04\.png` is not an image xviz can read"):
        xviz.explain(demo, paths, batch_size=2)


def _photo(path, size=(1024, 768)):
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    Image.fromarray(coarse).resize(size, Image.BICUBIC).save(path, quality=90)
    return path


def test_a_jpeg_is_decoded_at_a_reduced_scale_only_while_the_resize_allows(tmp_path):
    jpeg = _photo(tmp_path / "photo.jpg")
    assert read_image(jpeg).size == (1024, 768)
    assert read_image(jpeg, 256).size == (512, 384)  # 1/2: still at least 256 on the shorter side
    assert read_image(jpeg, 100).size == (256, 192)  # 1/4
    assert read_image(jpeg, 400).size == (1024, 768)  # 1/2 would give 384 < 400: decoded in full
    png = tmp_path / "photo.png"
    Image.open(jpeg).save(png)
    assert read_image(png, 100).size == (1024, 768)  # only JPEG has reduced-scale decoding


def test_the_reduced_scale_view_is_the_full_decode_within_a_few_grey_levels(tmp_path, demo):
    from xviz.models import IMAGENET_PREPROCESSING as pre

    jpeg = _photo(tmp_path / "photo.jpg")
    full = np.asarray(pre.view(read_image(jpeg)), dtype=np.float32)
    reduced = np.asarray(pre.view(read_image(jpeg, pre.resize)), dtype=np.float32)
    assert full.shape == reduced.shape == (224, 224, 3)
    assert np.abs(full - reduced).mean() < 2.0 and np.abs(full - reduced).max() <= 16


def test_cli_many_batches_keep_input_order_and_report_the_bad_file(run_cli, tmp_path):
    folder, paths = _folder(tmp_path, 11, broken={5})
    out = tmp_path / "o"
    code, stdout, err = run_cli("explain", "--model", "xviz-demo", "--batch-size", "2", "--workers", "2",
                                "--writers", "3", "--report", "--out", out, folder)
    assert code == 2 and "Traceback" not in err
    assert f"xviz: skipped: `{paths[5]}` is not an image" in err and "1 of 11 image(s) could not be read" in err
    shown = re.findall(r"^(p\d\d\.\w+) ", stdout, re.M)
    assert shown == [p.name for i, p in enumerate(paths) if i != 5]  # the table in input order
    assert sorted(q.name for q in out.glob("*_gradcam.png")) == [f"{p.stem}_gradcam.png" for i, p in
                                                                enumerate(paths) if i != 5]
    records = [json.loads(line) for line in (out / "xviz-results.jsonl").read_text().splitlines()]
    assert [r["shown"] for r in records] == shown  # the report's records in input order too
    assert not [q for q in out.iterdir() if q.name.startswith(".")]


def test_cli_jpg_format(run_cli, tmp_path):
    folder, _ = _folder(tmp_path, 3)
    code, stdout, err = run_cli("explain", "--model", "xviz-demo", "--format", "jpg", "--out", tmp_path / "o", folder)
    assert code == 0, err
    written = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert written == ["p00_gradcam.jpg", "p01_gradcam.jpg", "p02_gradcam.jpg"]
    with Image.open(tmp_path / "o" / "p01_gradcam.jpg") as im:
        assert im.format == "JPEG" and im.size == (64 * 4, 64 * 4)  # enlarged to at least 224 px
    assert "p01_gradcam.jpg" in stdout


def test_background_writes_come_back_in_order_with_a_bounded_queue():
    outstanding, most = [0], [0]
    lock = threading.Lock()

    def job(i):
        time.sleep(0.02 * (5 - i % 5))  # later jobs finish first
        with lock:
            outstanding[0] -= 1
        return i

    got = []
    with BackgroundWrites(threads=3, pending=2) as writes:
        for i in range(12):
            with lock:
                outstanding[0] += 1
                most[0] = max(most[0], outstanding[0])
            got += writes.submit(job, i)
            assert i + 1 - len(got) <= 2  # never more than `pending` waiting to be handed back
        got += writes.finish()
    assert got == list(range(12))
    assert most[0] <= 3


def test_a_failed_write_is_raised_in_the_main_thread_and_stops_the_rest():
    ran = []

    def job(i):
        ran.append(i)
        if i == 1:
            raise OSError(28, "No space left on device")
        time.sleep(0.05)

    with pytest.raises(OSError, match="No space left"):
        with BackgroundWrites(threads=1, pending=1) as writes:
            for i in range(20):
                writes.submit(job, i)
    assert len(ran) < 20  # the jobs not started were cancelled
