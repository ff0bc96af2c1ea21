"""The example third-party plugin `examples/xviz-cam-original` and its tutorial `docs/writing-plugins.md`.

Installed (as `make test` does), xviz must find its method `cam` through the `xviz` entry point.
Not installed, those tests are skipped, saying how to install it, so a bare `pytest tests` works.
The tutorial's code blocks must be verbatim copies of the package's files, whether it is installed or not.
"""

import re
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "examples" / "xviz-cam-original"
TUTORIAL = ROOT / "docs" / "writing-plugins.md"

try:
    DIST = distribution("xviz-cam-original")
except PackageNotFoundError:
    DIST = None

installed = pytest.mark.skipif(
    DIST is None, reason="the example plugin is not installed: `pip install -e examples/xviz-cam-original` "
                         "(`make test` does it)")


@pytest.fixture(autouse=True)
def _load_every_plugin(monkeypatch):
    monkeypatch.delenv("XVIZ_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("XVIZ_DISABLE_PLUGIN_AUTOLOAD", raising=False)


@installed
def test_entry_point_is_the_one_declared_in_the_package():
    [ep] = [ep for ep in DIST.entry_points if ep.group == "xviz"]
    assert (ep.name, ep.value) == ("xviz_cam_original", "xviz_cam_original")
    assert f'{ep.name} = "{ep.value}"' in (PACKAGE / "pyproject.toml").read_text()


@installed
def test_xviz_methods_and_plugins_show_cam_from_the_entry_point(run_cli):
    code, out, err = run_cli("methods")
    assert code == 0, err
    [row] = [line.split(None, 2) for line in out.splitlines() if line.split()[:1] == ["cam"]]
    assert row[:2] == ["cam", "xviz_cam_original"] and "Zhou et al. 2016" in row[2]

    code, out, err = run_cli("plugins")
    assert code == 0, err
    [row] = [line.split() for line in out.splitlines() if line.split()[:1] == ["xviz_cam_original"]]
    assert row == ["xviz_cam_original", "entry", "point", "of", "xviz-cam-original", DIST.version]


@installed
def test_not_loaded_when_autoload_is_disabled(run_cli, monkeypatch):
    monkeypatch.setenv("XVIZ_DISABLE_PLUGIN_AUTOLOAD", "1")
    code, out, _ = run_cli("methods")
    assert code == 0 and "gradcam" in out
    assert not any(line.split()[:1] == ["cam"] for line in out.splitlines())


@installed
def test_the_gallery_gives_cam_its_page(run_cli, tmp_path):
    from xviz import gallery

    if not hasattr(gallery, "generate"):
        pytest.skip("`xviz gallery` does not generate method pages yet")
    samples = tmp_path / "samples"
    samples.mkdir()
    (samples / "winged.png").write_bytes((ROOT / "plugins/xviz_zoo/assets/samples/winged.png").read_bytes())
    out = tmp_path / "gallery"
    code, _, err = run_cli("gallery", "--methods-only", "--out", out, "--samples", samples, "--runs", tmp_path / "runs")
    assert code == 0, err
    page = (out / "methods" / "cam.md").read_text()
    assert "`xviz_cam_original` (entry point of xviz-cam-original)" in page
    assert "M_t = sum_k W[t, k] A_k" in page  # the definition is the method's docstring
    assert (out / "methods" / "cam" / "grid_cam.png").stat().st_size > 1000
    assert "[cam](methods/cam.md)" in (out / "index.md").read_text()


def tutorial_blocks():
    """``(language, first line, rest)`` of each fenced code block of the tutorial."""
    text = TUTORIAL.read_text()
    return [(m["lang"], m["body"].split("\n", 1)[0], m["body"].split("\n", 1)[1])
            for m in re.finditer(r"^```(?P<lang>\w*)\n(?P<body>.*?)^```$", text, re.M | re.S)]


def test_tutorial_code_blocks_are_copied_from_the_package():
    blocks = [b for b in tutorial_blocks() if b[0] in ("python", "toml")]
    # pyproject.toml; four parts of the method; the declaring module; three parts of the tests; the README's example
    assert [first for _, first, _ in blocks] == ["# pyproject.toml", *["# src/xviz_cam_original/cam.py"] * 4,
                                                 "# src/xviz_cam_original/__init__.py",
                                                 *["# tests/test_cam_original.py"] * 3, "# README.md"]
    for _, first, body in blocks:
        source = (PACKAGE / first[2:]).read_text()
        assert body in source, f"a block of {TUTORIAL.name} no longer matches {first[2:]}: copy it again"
    pyproject = next(body for _, first, body in blocks if first == "# pyproject.toml")
    assert pyproject == (PACKAGE / "pyproject.toml").read_text()  # shown whole


@installed
def test_the_tutorials_python_example_runs(tmp_path, monkeypatch):
    [code] = [body for lang, first, body in tutorial_blocks() if lang == "python" and first == "# README.md"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "plugins").symlink_to(ROOT / "plugins")  # the sample images, at the path the example uses
    namespace = {}
    exec(compile(code, f"{TUTORIAL}", "exec"), namespace)
    cam, gradcam = namespace["cam"], namespace["gradcam"]
    assert (cam.method, gradcam.method) == ("cam", "gradcam")
    assert cam.maps.shape == (1, 1, 64, 64) and cam.target_names == (("striped",),)


def test_tutorial_images_exist():
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", TUTORIAL.read_text())
    assert images == ["images/writing_plugins_cam.png"]
    assert (TUTORIAL.parent / images[0]).stat().st_size > 10_000
