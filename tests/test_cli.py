"""The command line as a user meets it: outputs, tables, and one clear line for every bad input."""

import re
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xviz.data.synthetic import sample

SAMPLES = Path(__file__).resolve().parents[1] / "plugins" / "xviz_zoo" / "assets" / "samples"


@pytest.fixture
def pictures(tmp_path):
    folder = tmp_path / "pictures"
    folder.mkdir()
    for i, fmt in enumerate(["png", "jpg", "webp"]):
        Image.fromarray(sample(i, "test").image).save(folder / f"creature{i}.{fmt}")
    return folder


def assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("xviz: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_explain_folder_writes_overlays_and_prints_the_table(run_cli, pictures, tmp_path):
    out = tmp_path / "out"
    code, stdout, err = run_cli("explain", "--model", "xviz-demo", "--method", "gradcam,gradcampp", "--panel",
                                "--grid", "--save-raw", "--out", out, pictures)
    assert code == 0, err
    assert "explaining layer `features` (the model's default" in err
    for i in range(3):
        for method in ("gradcam", "gradcampp"):
            png = out / f"creature{i}_{method}.png"
            with Image.open(png) as im:
                assert im.format == "PNG" and im.mode == "RGB" and min(im.size) >= 64
            with Image.open(out / f"creature{i}_{method}_panel.png") as im:
                assert im.format == "PNG" and im.size[0] > 500
            assert np.load(out / f"creature{i}_{method}_raw.npy").shape == (16, 16)
            assert str(png) in stdout
    header = stdout.splitlines()[0].split()
    assert header[:4] == ["image", "predicted", "prob", "explained"]
    assert re.search(r"^creature0\.png +horned ", stdout, re.M)  # the bundled model recognises its classes
    for method in ("gradcam", "gradcampp"):
        with Image.open(out / f"grid_{method}.png") as im:
            assert im.format == "PNG" and im.size[0] > 3 * 200
        assert f"wrote a grid of 3 overlay(s) to {out / f'grid_{method}.png'}" in stdout
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left behind


def test_topk_writes_one_overlay_per_target(run_cli, pictures, tmp_path):
    code, stdout, err = run_cli("explain", "--model", "xviz-demo", "--topk", "3", "--out", tmp_path / "o",
                                pictures / "creature1.jpg")
    assert code == 0, err
    written = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert len(written) == 3 and written[0].startswith("creature1_gradcam_top1-tailed")


def test_folder_with_a_bad_file_explains_the_rest(run_cli, pictures, tmp_path):
    (pictures / "broken.jpg").write_text("this is not a picture")
    code, stdout, err = run_cli("explain", "--model", "xviz-demo", "--out", tmp_path / "o", pictures)
    assert code == 2
    assert "xviz: skipped: `" in err and "broken.jpg` is not an image" in err
    assert "1 of 4 image(s) could not be read" in err
    assert "Traceback" not in err
    assert len(list((tmp_path / "o").glob("creature*_gradcam.png"))) == 3


def _truncated_png(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(sample(0, "test").image).resize((256, 256)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("case, fragments", [
    ("missing", ["`nowhere.png` does not exist"]),
    ("text", ["is not an image xviz can read"]),
    ("truncated", ["is damaged or truncated"]),
    ("tiny", ["is 1x1 pixels: too small to explain"]),
    ("method", ["unknown method `gradcamz`: did you mean `gradcam`"]),
    ("model", ["unknown model `resnet5O`", "`xviz models` lists them"]),
    ("layer", ["no layer `features.99`", "`xviz layers"]),
    ("class", ["unknown class `dragon`"]),
    ("topk", ["exceeds the model's 6 classes"]),
    ("cmap", ["unknown colormap `jett`"]),
])
def test_bad_input_is_one_line_and_exit_2(run_cli, tmp_path, case, fragments):
    good = tmp_path / "good.png"
    Image.fromarray(sample(0, "test").image).save(good)
    args = {
        "missing": ["nowhere.png"],
        "text": [tmp_path / "notes.jpg"],
        "truncated": [_truncated_png(tmp_path)],
        "tiny": [tmp_path / "dot.png"],
        "method": ["--method", "gradcamz", good],
        "model": ["--model", "resnet5O", good],
        "layer": ["--layer", "features.99", good],
        "class": ["--target", "dragon", good],
        "topk": ["--topk", "7", good],
        "cmap": ["--cmap", "jett", good],
    }[case]
    (tmp_path / "notes.jpg").write_text("hello")
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    if "--model" not in args:
        args = ["--model", "xviz-demo", *args]
    code, _, err = run_cli("explain", "--out", tmp_path / "o", *args)
    assert_one_line_error(code, err, *fragments)


def test_huge_image_is_explained(run_cli, tmp_path):
    path = tmp_path / "huge.jpg"
    Image.new("RGB", (10000, 10000), (90, 140, 60)).save(path, quality=50)
    code, stdout, err = run_cli("explain", "--model", "xviz-demo", "--out", tmp_path / "o", path)
    assert code == 0, err
    with Image.open(tmp_path / "o" / "huge_gradcam.png") as im:
        assert im.size[0] == im.size[1] <= 512


def test_checkpoint_of_another_architecture(run_cli, tmp_path, demo):
    from xviz.checkpoint import save_checkpoint

    ckpt = tmp_path / "demo.pt"
    save_checkpoint(ckpt, arch="xviz-demo", state_dict=demo.module.state_dict(), class_names=demo.class_names,
                    preprocessing=demo.preprocessing)
    code, _, err = run_cli("explain", "--model", "resnet18", "--weights", ckpt, SAMPLES)
    assert_one_line_error(code, err, "holds weights of model `xviz-demo`, not `resnet18`")
    torch.save(demo.module.state_dict(), tmp_path / "bare.pt")
    code, _, err = run_cli("explain", "--model", "resnet18", "--weights", tmp_path / "bare.pt", SAMPLES)
    assert_one_line_error(code, err, "do not fit model `resnet18`", "missing", "pick the matching --model")
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    code, _, err = run_cli("explain", "--checkpoint", tmp_path / "junk.pt", SAMPLES)
    assert_one_line_error(code, err, "is not a PyTorch checkpoint, or it is damaged")
    torch.save({"model": demo.module}, tmp_path / "pickled.pt")  # a whole pickled module: refused, safely
    code, _, err = run_cli("explain", "--checkpoint", tmp_path / "pickled.pt", SAMPLES)
    assert_one_line_error(code, err, "holds Python objects besides weights")


def test_checkpoint_explains_like_the_model_it_holds(run_cli, tmp_path, demo):
    from xviz.checkpoint import save_checkpoint

    ckpt = tmp_path / "copy.pt"
    save_checkpoint(ckpt, arch="xviz-demo", state_dict=demo.module.state_dict(), class_names=demo.class_names,
                    preprocessing=demo.preprocessing)
    _, by_model, _ = run_cli("explain", "--model", "xviz-demo", "--out", tmp_path / "a", SAMPLES)
    _, by_ckpt, _ = run_cli("explain", "--checkpoint", ckpt, "--out", tmp_path / "a", SAMPLES)
    assert by_model == by_ckpt


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(run_cli):
    code, _, err = run_cli("explain", "--model", "xviz-demo", "--device", "cuda", SAMPLES)
    assert_one_line_error(code, err, "no CUDA GPU is available", "--device cpu")


def test_offline_imagenet_weights(run_cli, monkeypatch, tmp_path):
    import torch.hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "urlopen", offline)  # the network call itself: all of torch.hub's path runs
    code, out, err = run_cli("explain", "--method", "gradcampp", SAMPLES)  # default model: resnet50
    assert out == ""
    assert_one_line_error(code, err, "could not download the pretrained weights", "`resnet50`",
                          "--model xviz-demo", "--weights none")


def test_random_weights_run_offline(run_cli, tmp_path):
    img = tmp_path / "x.png"
    Image.fromarray(sample(3, "test").image).resize((120, 90)).save(img)
    code, stdout, err = run_cli("explain", "--model", "resnet18", "--weights", "none", "--out", tmp_path / "o", img)
    assert code == 0, err
    assert "explaining layer `layer4`" in err
    with Image.open(tmp_path / "o" / "x_gradcam.png") as im:
        assert im.size == (224, 224)


def test_listing_commands(run_cli):
    code, out, _ = run_cli("methods")
    assert code == 0 and "gradcam " in out and "gradcampp" in out and "xviz_cam" in out
    code, out, _ = run_cli("models")
    assert code == 0 and "xviz-demo" in out and "resnet50" in out and "vgg16" in out
    code, out, _ = run_cli("models", "--classes", "xviz-demo")
    assert out.split("\n")[0] == "0\thorned"
    code, out, _ = run_cli("plugins")
    assert re.search(r"^xviz_cam +built-in", out, re.M) and re.search(r"^xviz_attention +built-in", out, re.M)
    code, out, _ = run_cli("layers", "--model", "xviz-demo")
    assert code == 0 and "features " in out and "default" in out and "64x16x16" in out


def test_help_shows_examples(run_cli):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("explain", "--help")
    assert exit_info.value.code == 0


def test_plugin_subcommands(run_cli, monkeypatch):
    import xviz
    from xviz import registry

    class Hello:
        @xviz.hookimpl
        def xviz_register_commands(self, subparsers):
            p = subparsers.add_parser("hello", help="say hello")
            p.add_argument("--name", default="world")
            p.set_defaults(func=lambda args: print(f"hello {args.name}") or 3)

    real = registry.get_plugin_manager

    def with_hello(**kwargs):
        pm = real(**kwargs)
        pm.register(Hello(), name="hello")
        return pm

    monkeypatch.setattr(registry, "get_plugin_manager", with_hello)
    code, out, _ = run_cli("hello", "--name", "xviz")
    assert (code, out) == (3, "hello xviz\n")
    code, out, _ = run_cli("train", "--model", "xviz-demo", "--dataset", "nope", "--out", "x.pt")
    assert code == 2


def test_out_must_be_a_writable_folder(run_cli, tmp_path):
    (tmp_path / "afile").write_text("x")
    code, _, err = run_cli("explain", "--model", "xviz-demo", "--out", tmp_path / "afile", SAMPLES)
    assert_one_line_error(code, err, "is a file, not a folder: choose another --out")


def test_same_file_names_in_two_folders_get_distinct_outputs(run_cli, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.fromarray(sample(ord(folder), "test").image).save(tmp_path / folder / "same.png")
    code, stdout, err = run_cli("explain", "--model", "xviz-demo", "--out", tmp_path / "o",
                                tmp_path / "a" / "same.png", tmp_path / "b" / "same.png")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["a-same_gradcam.png", "b-same_gradcam.png"]
    assert str(tmp_path / "a" / "same.png") in stdout and str(tmp_path / "b" / "same.png") in stdout


def test_thin_strip_is_cropped_while_resizing(run_cli, tmp_path):
    import resource

    path = tmp_path / "strip.png"
    Image.new("RGB", (60000, 8), (200, 30, 30)).save(path)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code, _, err = run_cli("explain", "--model", "resnet18", "--weights", "none", "--out", tmp_path / "o", path)
    assert code == 0, err
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 1000  # resizing the whole strip to 224 px high would need ~2.8 GB


def test_checkpoint_may_be_a_run_folder_and_devices_are_checked(run_cli, tmp_path, demo):
    from xviz.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "run" / "best.pt", arch="xviz-demo", state_dict=demo.module.state_dict(),
                    class_names=demo.class_names, preprocessing=demo.preprocessing)
    code, stdout, err = run_cli("explain", "--checkpoint", tmp_path / "run", "--out", tmp_path / "o", SAMPLES)
    assert code == 0, err
    for device in ("mps", "meta", "cuda:x"):
        code, _, err = run_cli("explain", "--model", "xviz-demo", "--device", device, SAMPLES)
        assert_one_line_error(code, err, f"unknown device `{device}`")


def test_layers_needs_no_download(run_cli, monkeypatch, tmp_path):
    import torch.hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda *a, **k: (_ for _ in ()).throw(
        urllib.error.URLError("offline")))
    code, out, err = run_cli("layers", "--model", "resnet18")
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines()].count("layer4.1.relu") == 1
    assert re.search(r"^layer4 +512x7x7 +default", out, re.M)


# --- files written by explain: temporaries, interruptions, write failures, names -------------------

def test_stale_temporaries_are_removed_and_nothing_else(run_cli, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    stale = [out / ".winged_gradcam.png.k3j_9x0a.png", out / ".winged_gradcam_raw.npy.abcdefgh.npy"]
    for path in stale:
        path.write_bytes(b"\x89PNG partial")
    kept = [out / ".keep", out / "notes.png", out / ".winged.png.backup"]
    for path in kept:
        path.write_text("mine")
    code, _, err = run_cli("explain", "--model", "xviz-demo", "--out", out, SAMPLES / "winged.png")
    assert code == 0, err
    assert not any(p.exists() for p in stale)
    assert all(p.read_text() == "mine" for p in kept)


def test_interrupted_explain_leaves_no_partial_file(run_cli, tmp_path, monkeypatch):
    saved = []
    real_save = Image.Image.save

    def save_then_interrupt(self, fp, *args, **kwargs):
        if saved:  # the second picture: a partial file, then Ctrl-C
            Path(fp).write_bytes(b"\x89PNG half")
            raise KeyboardInterrupt
        saved.append(fp)
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_then_interrupt)
    out = tmp_path / "o"
    code, _, err = run_cli("explain", "--model", "xviz-demo", "--out", out, SAMPLES)
    assert code == 130 and err.strip().splitlines()[-1] == "xviz: interrupted"
    names = sorted(p.name for p in out.iterdir())
    assert names == ["horned_gradcam.png"]  # the one finished overlay; no hidden partial file
    with Image.open(out / "horned_gradcam.png") as im:
        assert im.size == (256, 256)


@pytest.mark.parametrize("errno_, hint", [(28, "the disk is full: free space or choose another --out"),
                                          (13, "permission denied: choose another --out")])
def test_write_failure_counts_what_was_written(run_cli, tmp_path, monkeypatch, errno_, hint):
    import xviz.outputs

    calls = []
    real = xviz.outputs.save_png

    def fail_on_third(picture, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:  # overlay 1, panel 1, then overlay 2 fails
            raise OSError(errno_, "refused", str(path))
        return real(picture, path, *args, **kwargs)

    monkeypatch.setattr(xviz.outputs, "save_png", fail_on_third)
    code, out, err = run_cli("explain", "--model", "xviz-demo", "--panel", "--out", tmp_path / "o", SAMPLES)
    assert code == 2 and out == "" and "Traceback" not in err
    last = err.strip().splitlines()[-1]  # below the progress bar, on a line of its own
    assert last == f"xviz: error: could not write into `{tmp_path / 'o'}`: {hint}; 1 overlay(s) were written before"


def test_the_same_file_twice_is_explained_once(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(SAMPLES)
    code, stdout, err = run_cli("explain", "--model", "xviz-demo", "--out", tmp_path / "o", "winged.png",
                                "./winged.png", SAMPLES / "winged.png")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["winged_gradcam.png"]
    assert "wrote 1 overlay(s)" in stdout


def test_long_names(run_cli, tmp_path, demo):
    from xviz.checkpoint import save_checkpoint

    long_class = "a-very-long-class-name-" * 14  # 322 characters: cut in file names
    ckpt = tmp_path / "long.pt"
    save_checkpoint(ckpt, arch="xviz-demo", state_dict=demo.module.state_dict(),
                    class_names=[long_class + str(i) for i in range(6)], preprocessing=demo.preprocessing)
    code, stdout, err = run_cli("explain", "--checkpoint", ckpt, "--topk", "2", "--out", tmp_path / "o",
                                SAMPLES / "winged.png")
    assert code == 0, err
    assert all(len(p.name) < 120 for p in (tmp_path / "o").iterdir()) and "wrote 2 overlay(s)" in stdout

    image = tmp_path / ("x" * 240 + ".png")  # a valid name; with `_gradcam_top1-...` added, too long
    image.write_bytes((SAMPLES / "winged.png").read_bytes())
    code, _, err = run_cli("explain", "--model", "xviz-demo", "--topk", "2", "--out", tmp_path / "p", image)
    last = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err and "free space" not in err
    assert last.startswith(f"xviz: error: could not write into `{tmp_path / 'p'}`: the file name `{'x' * 240}_gradcam_")
    assert last.endswith("is too long for the file system: shorten the image's file name or explain fewer targets "
                         "(--topk); 0 overlay(s) were written before")


def test_shell_completion_of_commands_and_method_names(tmp_path):
    import os
    import subprocess
    import sys

    def complete(line):
        out = tmp_path / "completions"
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("XVIZ_")}, "_ARGCOMPLETE": "1",
               "COMP_LINE": line, "COMP_POINT": str(len(line)), "_ARGCOMPLETE_STDOUT_FILENAME": str(out)}
        done = subprocess.run([sys.executable, "-m", "xviz"], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return sorted(out.read_text().replace("\x0b", " ").split())

    assert complete("xviz expl") == ["explain"]
    assert complete("xviz explain --method gradc") == ["gradcam", "gradcampp"]
    assert complete("xviz layers --model resnet1") == ["resnet101", "resnet152", "resnet18"]
