"""The documentation: the site builds with --strict, every hook is documented and tested, every
Python example in the docs runs, and the gallery is generated from the registry."""

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import xviz
from xviz import hookspecs

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
TESTS = ROOT / "tests"
SKIP = re.compile(r"<!--\s*skip\b[^>]*-->\s*$")


def hook_names() -> list[str]:
    return [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("xviz_")]


# ---------------------------------------------------------------- the site

def test_mkdocs_builds_the_site_with_strict(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    problems = [line for line in proc.stderr.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert proc.returncode == 0, "mkdocs build --strict failed:\n" + "\n".join(problems or [proc.stderr[-4000:]])
    gallery = (site / "gallery" / "index.html").read_text()
    assert "<img" in gallery
    api = (site / "api" / "index.html").read_text()
    assert "explain_tensors" in api and "xviz_register_methods" in api  # rendered from the docstrings
    # every picture a built gallery page shows exists in the site
    for page in (site / "gallery").rglob("*.html"):
        for src in re.findall(r'<img[^>]* src="([^"]+)"', page.read_text()):
            if not src.startswith(("http", "data:")):
                assert (page.parent / src).resolve().is_file(), f"{page.relative_to(site)} shows missing {src}"


def test_the_mkdocs_nav_names_only_existing_pages_and_the_theme_works_offline():
    text = (ROOT / "mkdocs.yml").read_text()
    for page in re.findall(r":\s*([\w/.-]+\.md)\s*$", text, re.M):
        assert (DOCS / page).is_file(), f"mkdocs.yml's nav names docs/{page}, which does not exist"
    assert re.search(r"^\s*font:\s*false", text, re.M), "the Material theme must not fetch Google Fonts"
    assert "social" not in text and "analytics" not in text


# ---------------------------------------------------------------- hooks: documented and tested

@pytest.mark.parametrize("hook", hook_names())
def test_every_hook_is_in_the_hook_reference(hook):
    reference = (DOCS / "plugins.md").read_text()
    assert re.search(rf"^#+ `{hook}\(", reference, re.M), (
        f"hook `{hook}` (xviz/hookspecs.py) has no entry in the hook reference docs/plugins.md: "
        f"add a heading \"### `{hook}(...)`\" describing it")


@pytest.mark.parametrize("hook", hook_names())
def test_every_hook_has_a_test(hook):
    """A test implements the hook in a test plugin (``def hook(``) or calls it (``hook.hook(``)."""
    used = re.compile(rf"def {hook}\(|hook\.{hook}\(")
    users = [p.name for p in TESTS.glob("test_*.py") if used.search(p.read_text())]
    assert users, (f"hook `{hook}` (xviz/hookspecs.py) is exercised by no test: add one that registers a "
                   f"plugin implementing it (def {hook}(...)) or calls pm.hook.{hook}(...)")


def test_the_hook_list_is_read_from_the_contract():
    assert {"xviz_register_methods", "xviz_register_models", "xviz_register_commands"} <= set(hook_names())


class TinyNet(nn.Module):
    def __init__(self, num_classes=2):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


class Bars(torch.utils.data.Dataset):
    """Class 0: a bright vertical bar, class 1: a bright horizontal bar (16x16 PIL images)."""

    classes = ["vertical", "horizontal"]

    def __init__(self, split, transform, size=8):
        self.transform, self.size, self.offset = transform, size, 0 if split == "train" else 100

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        from PIL import Image

        g = torch.Generator().manual_seed(self.offset + i)
        image = (torch.rand(16, 16, 3, generator=g) * 60).to(torch.uint8)
        pos = 3 + (i // 2) % 10
        if i % 2 == 0:
            image[:, pos] = 255
        else:
            image[pos, :] = 255
        return self.transform(Image.fromarray(image.numpy())), i % 2


class ModelAndDataPlugin:
    @xviz.hookimpl
    def xviz_register_models(self):
        from xviz.images import Preprocessing
        from xviz.models import ModelSpec

        pre = Preprocessing(None, None, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        return [ModelSpec("tiny-bars", lambda num_classes, **options: TinyNet(num_classes), pre, Bars.classes,
                          summary="a test model")]

    @xviz.hookimpl
    def xviz_register_datasets(self):
        from xviz.datasets import DatasetSpec
        from xviz.images import Preprocessing

        pre = Preprocessing(None, None, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))

        def build(split, root=None, transform=None, size=8):
            return Bars(split, transform or pre.tensor, size)

        return [DatasetSpec("bars", build, Bars.classes, pre, summary="a test dataset", augment=())]


def test_a_plugins_model_and_dataset_train_and_feed_misclassified(pm, tmp_path, capsys):
    """The model and dataset hooks end to end: a plugin's model trains on a plugin's dataset, and
    ``xviz misclassified`` draws the checkpoint's mistakes titled Predicted / Actual."""
    from xviz.gallery import run_xviz
    from xviz.models import load_model
    from xviz.registry import datasets, models

    pm.register(ModelAndDataPlugin(), name="bars")
    assert "tiny-bars" in models(pm) and "bars" in datasets(pm)
    assert load_model("tiny-bars", weights="none", pm=pm).class_names == ["vertical", "horizontal"]
    run = tmp_path / "run"
    assert run_xviz(["train", "--model", "tiny-bars", "--weights", "none", "--dataset", "bars", "--epochs", "1",
                     "--batch-size", "4", "--lr", "0.01", "--workers", "0", "--out", str(run)], pm) == 0
    out = tmp_path / "mistakes.png"
    assert run_xviz(["misclassified", "--checkpoint", str(run), "--dataset", "bars", "--dataset-options", "size=12",
                     "--method", "gradcam", "--count", "3", "--out", str(out)], pm) == 0
    printed = capsys.readouterr().out
    wrong = int(re.search(r"(\d+) of 12 test images misclassified", printed).group(1))
    if wrong:
        assert out.is_file() and out.stat().st_size > 1000
    else:
        assert "every image is classified correctly" in printed and not out.exists()


def test_find_mistakes_reports_predicted_and_actual(demo):
    from PIL import Image

    from xviz.data.synthetic import sample
    from xviz.evaluation.mistakes import find_mistakes

    # the true labels shifted by one class: every image the demo model gets right becomes a mistake
    shifted = [(demo.preprocessing.view(Image.fromarray(sample(i, "test").image)), (i % 6 + 1) % 6) for i in range(6)]
    mistakes, total = find_mistakes(demo, shifted, demo.class_names, batch_size=4)
    assert total == 6 and len(mistakes) >= 5
    for m in mistakes:
        assert m.predicted != m.actual and 0 < m.probability <= 1
        assert m.actual == demo.class_names[(m.index % 6 + 1) % 6]


def test_misclassified_refuses_a_model_of_another_class_count(run_cli, tmp_path):
    code, _, err = run_cli("misclassified", "--model", "xviz-demo", "--dataset", "cifar10", "--data", tmp_path,
                           "--out", tmp_path / "m.png")
    assert code == 2 and err.startswith("xviz: error:") and "\n" not in err.strip()
    code, _, err = run_cli("misclassified", "--model", "xviz-demo", "--out", tmp_path / "m.jpg")
    assert code == 2 and "must name a .png file" in err


# ---------------------------------------------------------------- every Python example runs

def python_examples() -> list[tuple[str, list[tuple[int, str]]]]:
    """``[(page, [(line, code), ...])]``: the ```python blocks of each page, without those marked
    ``<!-- skip: why -->`` on the line before."""
    pages = []
    for page in sorted(DOCS.rglob("*.md")):
        lines = page.read_text().splitlines()
        blocks, i = [], 0
        while i < len(lines):
            if lines[i].strip().startswith("```python"):
                start, body = i, []
                i += 1
                while i < len(lines) and not lines[i].strip().startswith("```"):
                    body.append(lines[i])
                    i += 1
                previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
                if not SKIP.search(previous):
                    blocks.append((start + 1, "\n".join(body)))
            i += 1
        if blocks:
            pages.append((str(page.relative_to(DOCS)), blocks))
    return pages


EXAMPLES = python_examples()


def test_examples_are_found():
    assert any(page == "getting-started.md" for page, _ in EXAMPLES)


@pytest.mark.parametrize("page,blocks", EXAMPLES, ids=[page for page, _ in EXAMPLES])
def test_every_python_example_in_the_docs_runs(page, blocks, tmp_path, monkeypatch):
    """A page's blocks run in order in one namespace (a later block may use an earlier one's names),
    in an empty folder holding a link to the repository's ``plugins/`` (for the sample images)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    (tmp_path / "plugins").symlink_to(ROOT / "plugins")
    namespace = {"__name__": f"docs_example_{Path(page).stem}"}
    for line, code in blocks:
        try:
            exec(compile(code, f"docs/{page}:{line}", "exec"), namespace)
        except Exception as exc:
            pytest.fail(f"the example at docs/{page} line {line} fails: {type(exc).__name__}: {exc}\n"
                        "fix it, or mark it `<!-- skip: why -->` if it needs the network or a real dataset")


# ---------------------------------------------------------------- the gallery

class ExtraMethodPlugin:
    """A third-party plugin: its method must get a gallery page without anyone listing it."""

    @xviz.hookimpl
    def xviz_register_methods(self):
        from xviz.methods import method

        @method("test-gradnorm", summary="norm of the gradient (a test plugin)", reference="https://example.org/p")
        def gradnorm(ctx):
            """``M_ij = ||G_:ij||_2``: the gradient's norm over channels."""
            return ctx.gradients.norm(dim=2)

        return [gradnorm]


def test_the_gallery_gives_a_third_party_method_its_page(pm, tmp_path):
    from xviz.gallery import FIGURES, generate

    samples = tmp_path / "samples"
    samples.mkdir()
    for name in ("winged", "striped"):
        (samples / f"{name}.png").write_bytes((ROOT / "plugins/xviz_zoo/assets/samples" / f"{name}.png").read_bytes())
    pm.register(ExtraMethodPlugin(), name="extra")
    out = tmp_path / "gallery"
    methods, figures = generate(out, pm=pm, samples=samples, runs=tmp_path / "runs", figures=False)

    assert {m.name for m in methods} >= {"gradcam", "gradcampp", "test-gradnorm"}
    page = (out / "methods" / "test-gradnorm.md").read_text()
    assert "norm of the gradient (a test plugin)" in page and "`extra`" in page
    assert "`M_ij = ||G_:ij||_2`" in page  # the definition comes from the docstring
    assert f"xviz explain --model xviz-demo --method test-gradnorm --grid --panel --out {out}/methods/test-gradnorm" in page
    for image in ("grid_test-gradnorm.png", "winged_test-gradnorm_panel.png"):
        assert f"(test-gradnorm/{image})" in page
        assert (out / "methods" / "test-gradnorm" / image).stat().st_size > 1000
    assert not (out / "methods" / "test-gradnorm" / "striped_test-gradnorm.png").exists()  # only what is shown
    index = (out / "index.md").read_text()
    assert "[test-gradnorm](methods/test-gradnorm.md)" in index
    # a method that does not apply to the demo model says why, with the command that says so
    attention = (out / "methods" / "attention.md").read_text()
    assert "does not apply to the demo model" in attention and "xviz: error:" in attention
    # no figure pages were asked for: none written, and no page links to one that does not exist
    assert not (out / "figures").exists() and all(f.missing or not f.page for f in figures)
    assert "../figures/" not in page and "../figures/" not in attention
    assert len({f.slug for f in FIGURES}) == len(FIGURES)


def test_a_figure_whose_method_is_not_registered_is_pending(pm, tmp_path, monkeypatch):
    from xviz import gallery

    figure = gallery.Figure("needs-x", "Needs x", "d", lambda s: [], lambda s: ["x.png"], methods=("no-such-method",))
    monkeypatch.setattr(gallery, "FIGURES", [figure])
    samples = tmp_path / "samples"
    samples.mkdir()
    (samples / "winged.png").write_bytes((ROOT / "plugins/xviz_zoo/assets/samples/winged.png").read_bytes())
    _, figures = gallery.generate(tmp_path / "g", pm=pm, samples=samples, runs=tmp_path / "runs")
    assert [f.missing for f in figures] == [["no-such-method"]]
    assert "pending: `no-such-method` is not registered yet" in (tmp_path / "g" / "index.md").read_text()
    assert not (tmp_path / "g" / "figures" / "needs-x.md").exists()


def test_a_figure_page_runs_its_commands_and_shows_them(pm, tmp_path, monkeypatch):
    """A figure entry is its commands: they run in-process and the page shows exactly them."""
    from xviz import gallery

    def steps(s):
        return [gallery.Step(["explain", "--model", "xviz-demo", "--method", "gradcampp", "--panel", "--out", s.page,
                              *s.sample("winged")])]

    figure = gallery.Figure("bird", "A bird", "The winged one.", steps, lambda s: ["winged_gradcampp_panel.png"],
                            methods=("gradcampp",))
    monkeypatch.setattr(gallery, "FIGURES", [figure])
    samples = tmp_path / "samples"
    samples.mkdir()
    (samples / "winged.png").write_bytes((ROOT / "plugins/xviz_zoo/assets/samples/winged.png").read_bytes())
    out = tmp_path / "g"
    gallery.generate(out, pm=pm, samples=samples, runs=tmp_path / "runs")
    page = (out / "figures" / "bird.md").read_text()
    assert "![A bird: winged_gradcampp_panel.png](bird/winged_gradcampp_panel.png)" in page
    assert (f"xviz explain --model xviz-demo --method gradcampp --panel --out {out}/figures/bird "
            f"{samples}/winged.png") in page
    assert sorted(p.name for p in (out / "figures" / "bird").iterdir()) == ["winged_gradcampp_panel.png"]
    assert "[A bird](../figures/bird.md)" in (out / "methods" / "gradcampp.md").read_text()


def test_the_committed_gallery_has_a_page_for_every_registered_method_and_lists_every_figure(pm):
    from xviz.gallery import FIGURES
    from xviz.registry import methods

    index = (DOCS / "gallery" / "index.md").read_text()
    for name in methods(pm):
        assert (DOCS / "gallery" / "methods" / f"{name}.md").is_file(), (
            f"method `{name}` has no gallery page: run `xviz gallery --methods-only` (or `make docs`) and "
            "commit docs/gallery")
    for fig in FIGURES:
        page = DOCS / "gallery" / "figures" / f"{fig.slug}.md"
        if page.is_file():
            assert f"(figures/{fig.slug}.md)" in index
            for image in re.findall(r"\]\(([^)]+\.png)\)", page.read_text()):
                assert (page.parent / image).is_file(), f"{page.name} shows {image}, which is not committed"
        else:  # the index says why there is no page
            assert "pending:" in index or f"`xviz gallery --figure {fig.slug}`" in index, \
                f"figure `{fig.slug}`: neither a page nor a line in docs/gallery/index.md; run `xviz gallery`"


def test_the_gallery_index_lists_every_document_figure_with_its_status():
    from xviz.gallery import FIGURES
    from xviz.gallery.catalogue import DOCUMENT_FIGURES, NEEDS_DATA, OFFLINE, SYNTHETIC

    index = (DOCS / "gallery" / "index.md").read_text()
    for row in DOCUMENT_FIGURES:
        line = next((x for x in index.splitlines() if x.startswith(f"| {row.source} |")), None)
        assert line, f"docs/gallery/index.md has no row for `{row.source}`: run `xviz gallery --methods-only`"
        assert any(status in line for status in (SYNTHETIC, NEEDS_DATA, OFFLINE, "not drawn yet")), line
        if row.status != SYNTHETIC and "](figures/" not in line:
            assert row.why and row.why.split()[0] in line, f"the row for `{row.source}` must say why: {line}"
    for fig in FIGURES:  # every figure page has its row: the one of its document figure, or its own
        assert f"](figures/{fig.slug}.md)" in index or f"--figure {fig.slug}`" in index or "pending:" in index, fig.slug


@pytest.mark.parametrize("slug", [f.slug for f in __import__("xviz.gallery", fromlist=["FIGURES"]).FIGURES])
def test_a_committed_figure_page_says_what_it_reproduces_and_shows_its_figures_commands(slug):
    """The page's header names the document figure; its commands are exactly what FIGURES runs now."""
    from xviz.gallery import FIGURES, Setting
    from xviz.gallery.pages import shown

    page = DOCS / "gallery" / "figures" / f"{slug}.md"
    if not page.is_file():
        pytest.skip(f"figure `{slug}` has no committed page (the index says why)")
    fig = next(f for f in FIGURES if f.slug == slug)
    text = page.read_text()
    assert text.splitlines()[2].startswith('!!! info "Reproduces '), f"{page.name}: no reproduction note at its top"
    setting = Setting(runs="runs/gallery", page=f"docs/gallery/figures/{slug}", samples="plugins/xviz_zoo/assets/samples")
    block = text.split("## Reproduce with", 1)[1].split("```bash\n", 1)[1].split("\n```", 1)[0]
    assert block.splitlines() == [shown(step.argv) for step in fig.steps(setting)], (
        f"{page.name} shows other commands than FIGURES runs: regenerate it (`xviz gallery --figure {slug}`)")


# ---------------------------------------------------------------- numbers quoted from run records

def test_numbers_the_docs_quote_are_those_of_the_run_records():
    from xviz.gallery.records import MARKER, check_quotes, read_records, read_tables

    records, tables = read_records(DOCS / "gallery"), read_tables(DOCS / "gallery")
    quoted = 0
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text()
        quoted += len(MARKER.findall(text))
        comments = len(re.findall(r"<!--\s*(?:run|table)\s", text))
        assert comments == len(MARKER.findall(text)), (
            f"docs/{page.name}: a `<!-- run ... -->` / `<!-- table ... -->` marker that follows no number (write "
            "it right after the number and its unit: `99.40 %<!-- run frozen best -->`)")
        problems = check_quotes(text, records, tables)
        assert not problems, f"docs/{page.name}: " + "; ".join(problems)
    assert quoted >= 5, "the docs quote run numbers with markers (`99.40 %<!-- run frozen best -->`)"


def test_a_quoted_number_its_record_does_not_hold_is_caught():
    from xviz.gallery.records import check_quotes, summarize

    history = [{"epoch": 1, "test_acc": 0.5, "train_acc": 0.4, "train_loss": 1.5, "seconds": 60},
               {"epoch": 2, "test_acc": 0.8125, "train_acc": 0.7, "train_loss": 0.9, "seconds": 90}]
    records = {"r": summarize(history)}
    assert records["r"]["best"] == 81.25 and records["r"]["minutes"] == 2.5 and records["r"]["test_acc@1"] == 50.0
    assert check_quotes("reaches 81.25 %<!-- run r best --> in 2<!-- run r epochs --> epochs, 81.3 %<!-- run r best -->",
                        records) == []
    assert check_quotes("we got 81.0 %<!-- run r best -->", records) == [
        "`81.0` quotes `best` of run `r`, which holds 81.25"]
    tables = {"f/t.csv": {"r": {"run": "r", "macs": "52.83"}}}
    assert check_quotes("52.8 M<!-- table f/t.csv r macs -->", {}, tables) == []
    assert check_quotes("52.9 M<!-- table f/t.csv r macs -->", {}, tables) == [
        "`52.9` quotes `macs` of row `r` of `f/t.csv`, which holds 52.83"]
    assert "does not hold" in check_quotes("1<!-- table f/t.csv r acc -->", {}, tables)[0]
    assert "which no gallery figure records" in check_quotes("1 %<!-- run other best -->", records)[0]
    assert "does not hold" in check_quotes("1<!-- run r test_acc@9 -->", records)[0]


def test_the_readme_links_the_gallery_and_keeps_its_first_commands():
    readme = (ROOT / "README.md").read_text()
    assert "docs/gallery/index.md" in readme
    assert readme.splitlines()[3:5] == [
        "make demo   # sets up .venv, explains the bundled sample images with GradCAM++ -> demo-out/ (open demo-out/index.html)",
        "make test   # sets up .venv, runs the test suite (fast set; `make test-all` adds the slow ones)",
    ]


def test_make_docs_regenerates_the_gallery_then_builds_strictly():
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ndocs:", 1)[1].split("\n\n", 1)[0]
    assert "xviz gallery --out docs/gallery" in recipe and "mkdocs build --strict" in recipe
    assert recipe.index("xviz gallery") < recipe.index("mkdocs build")


def test_docs_toolchain_is_in_the_dev_extra():
    from xviz.train.config import tomllib

    dev = " ".join(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"])
    assert "mkdocs>=1.6,<1.7" in dev and "mkdocs-material" in dev and "mkdocstrings[python]" in dev



def test_a_method_the_demo_model_cannot_run_shows_its_maps_from_the_figure_that_trains_for_it():
    text = (DOCS / "gallery" / "methods" / "attention.md").read_text()
    shots = re.findall(r"\]\(\.\./figures/attention-layers/([^)]+\.png)\)", text)
    assert shots, "the attention method page shows no attention maps"
    assert all((DOCS / "gallery" / "figures" / "attention-layers" / shot).is_file() for shot in shots)
    assert text.index("attention-layers/") < text.index("does not apply to the demo model")  # the maps come first
