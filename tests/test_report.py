"""The report page: data read back from an output folder, and the page driven in headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xviz.errors import XvizError
from xviz.report import (RESULTS, SETTINGS, append_records, build_report, read_labels, read_results, report_data,
                         write_evaluation)

CLASSES = ["cat", "dog", "bird"]


def _png(path: Path, seed: int, side: int = 64) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(path)
    return path


def fake_run(out: Path, names, methods=("gradcam", "gradcampp"), topk=1, src=None) -> list[dict]:
    """An output folder as an explain run leaves it: source images in class folders, overlays, results."""
    src = src or out.parent / "images"
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for i, name in enumerate(names):
        true = CLASSES[i % 3]
        (src / true).mkdir(parents=True, exist_ok=True)
        image = _png(src / true / name, i, side=96)
        predicted = CLASSES[(i * 2) % 3]
        outputs = []
        for m in methods:
            for k in range(topk):
                target = CLASSES[(i * 2 + k) % 3]
                overlay = f"{Path(name).stem}_{m}" + (f"_top{k + 1}-{target}" if topk > 1 else "") + ".png"
                _png(out / overlay, 100 * i + k)
                outputs.append({"method": m, "layer": "body.3", "target": target, "prob": 0.9 - 0.1 * k - 0.01 * i,
                                "rank": k + 1, "overlay": overlay, "panel": None})
        records.append({"image": str(image), "shown": name, "predicted": predicted, "prob": 0.9 - 0.01 * i,
                        "outputs": outputs})
    out.mkdir(parents=True, exist_ok=True)
    (out / SETTINGS).write_text(json.dumps({"model": "tiny", "methods": list(methods), "class_names": CLASSES,
                                            "versions": {"xviz": "0.1.0"}}))
    append_records(out, records)
    return records


def test_results_survive_a_partial_last_line_and_a_rerun(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    records = fake_run(out, ["a.png", "b.png"])
    rerun = dict(records[0], predicted="bird")
    append_records(out, [rerun])
    with open(out / RESULTS, "a") as f:
        f.write('{"image": "c.png", "outpu')  # a kill in the middle of a line
    results = read_results(out)
    assert results.damaged == 1
    assert [r["image"] for r in results.records] == [records[1]["image"], records[0]["image"]]
    assert results.records[1]["predicted"] == "bird"  # the later line for the same image wins


def test_missing_and_unlisted_files_are_listed_not_fatal(tmp_path):
    out = tmp_path / "out"
    fake_run(out, ["a.png", "b.png", "c.png"])
    (out / "b_gradcam.png").unlink()
    _png(out / "stray_gradcam.png", 9)
    data = report_data(out, show_progress=False)
    assert data["missing"] == ["b_gradcam.png"]
    assert data["unlisted"] == ["stray_gradcam.png"]
    b = next(r for r in data["rows"] if r["name"] == "b.png")
    assert "thumb" not in b["cells"]["gradcam"][0] and b["cells"]["gradcampp"][0]["thumb"]
    page = build_report(out, show_progress=False)
    assert page == out / "index.html" and (out / "report" / "data.js").is_file()


def test_true_class_from_folders_and_from_a_labels_file(tmp_path):
    out = tmp_path / "out"
    records = fake_run(out, ["a.png", "b.png", "c.png"])
    data = report_data(out, show_progress=False)
    assert [r["label"] for r in data["rows"]] == ["cat", "dog", "bird"]  # the ImageFolder layout
    assert data["has_labels"]
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\na.png,dog\n")
    assert read_labels(labels) == {"a.png": "dog"}
    data = report_data(out, read_labels(labels), show_progress=False)
    assert data["rows"][0]["label"] == "dog" and data["rows"][0]["image"] == records[0]["image"]
    (tmp_path / "labels.json").write_text(json.dumps({"images/cat/a.png": "bird"}))
    assert report_data(out, read_labels(tmp_path / "labels.json"), show_progress=False)["rows"][0]["label"] == "bird"


@pytest.mark.parametrize("text, suffix, message", [
    ("a.png,dog,extra\n", ".csv", "line 1 of the labels file"),
    ("[1, 2]", ".json", "must hold one object"),
    ("{oops", ".json", "is not valid JSON"),
])
def test_bad_labels_files_are_one_line(tmp_path, text, suffix, message):
    path = tmp_path / f"labels{suffix}"
    path.write_text(text)
    with pytest.raises(XvizError, match=message):
        read_labels(path)


def test_a_folder_without_results_is_one_line(tmp_path):
    with pytest.raises(XvizError, match="holds no xviz-results.jsonl"):
        build_report(tmp_path)
    with pytest.raises(XvizError, match="is not a folder"):
        build_report(tmp_path / "nowhere")


def test_names_with_html_are_escaped_in_the_page(tmp_path):
    out = tmp_path / "out"
    fake_run(out, ["<script>alert(1).png", "a b ü #1.png"])
    page = build_report(out, show_progress=False).read_text()
    assert "<script>alert" not in page  # names reach the page only through data.js and textContent
    (out / SETTINGS).write_text(json.dumps({"model": "<b>bold</b>", "class_names": CLASSES}))
    page = build_report(out, show_progress=False).read_text()
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold</b>" not in page


# --- in a real browser --------------------------------------------------------------------------------

def _chromium():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install xviz[dev])")
    binary = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.skip("no headless Chromium here: `apt-get install chromium chromium-driver` runs the browser tests")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1000",
                 "--allow-file-access-from-files"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    from selenium.webdriver.chrome.service import Service

    return webdriver.Chrome(options=options, service=Service(driver_path))


@pytest.fixture(scope="module")
def browser():
    driver = _chromium()
    yield driver
    driver.quit()


def _open(browser, page: Path) -> None:
    browser.get_log("browser")  # what earlier pages logged is not this page's
    browser.get(page.resolve().as_uri())


def _rows(browser):
    return browser.find_elements("css selector", "#body tr")


def _names(browser):
    return [r.find_element("css selector", "td.info div").text for r in _rows(browser)]


def test_page_loads_filters_sorts_and_opens_a_panel(browser, tmp_path):
    from selenium.webdriver.support.ui import Select

    out = tmp_path / "out"
    names = [f"img{i:02d}.png" for i in range(7)] + ["<img src=x onerror=window.pwned=1>.png", "a b ü #1.png"]
    fake_run(out, names, topk=2)
    (out / "img03_gradcam_top1-cat.png").unlink()  # a file deleted by hand
    _open(browser, build_report(out, show_progress=False))
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    assert browser.execute_script("return window.pwned === undefined")
    assert len(_rows(browser)) == 9
    assert "<img src=x onerror=window.pwned=1>.png" in _names(browser)  # shown as text
    assert "1 file(s) named by the results are missing: img03_gradcam_top1-cat.png" in browser.find_element("id", "problems").text
    # every image on the page resolves, the missing one is marked
    browser.execute_script("document.querySelectorAll('#body img').forEach(i => i.loading = 'eager')")
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 10).until(lambda b: b.execute_script(
        "return [...document.querySelectorAll('#body img')].every(i => i.complete)"))
    broken = browser.execute_script(
        "return [...document.querySelectorAll('#body img')].filter(i => !(i.naturalWidth > 0)).map(i => i.src)")
    assert not broken, broken
    assert len(browser.find_elements("css selector", "#body .missing")) == 1

    Select(browser.find_element("id", "filter-predicted")).select_by_visible_text("dog")
    expected = {n for i, n in enumerate(names) if CLASSES[(i * 2) % 3] == "dog"}
    assert set(_names(browser)) == expected
    Select(browser.find_element("id", "filter-predicted")).select_by_visible_text("any")

    browser.find_element("id", "filter-misclassified").click()
    wrong = {n for i, n in enumerate(names) if CLASSES[(i * 2) % 3] != CLASSES[i % 3]}
    assert set(_names(browser)) == wrong
    browser.find_element("id", "filter-misclassified").click()

    Select(browser.find_element("id", "sort")).select_by_value("prob-asc")
    assert _names(browser)[0] == names[-1] and _names(browser)[-1] == names[0]

    toggles = browser.find_elements("css selector", "#method-toggles input")
    toggles[1].click()  # hide gradcampp
    assert [h.text for h in browser.find_elements("css selector", "#head th")] == ["image", "file and prediction", "gradcam"]

    browser.find_element("css selector", "#body td:nth-child(3) img").click()
    viewer = browser.find_element("id", "viewer")
    assert viewer.is_displayed()
    src = browser.find_element("id", "viewer-image").get_attribute("src")
    assert src.endswith(".png") and "thumbs" not in src  # the full-size file, not its thumbnail
    viewer.click()
    assert not viewer.is_displayed()


def test_pages_of_many_rows(browser, tmp_path):
    out = tmp_path / "out"
    fake_run(out, [f"img{i:03d}.png" for i in range(120)], methods=("gradcam",))
    _open(browser, build_report(out, show_progress=False))
    assert len(_rows(browser)) == 50
    assert browser.find_element("id", "page").text == "page 1 of 3"
    browser.find_element("id", "next").click()
    assert _names(browser)[0] == "img050.png"
    browser.find_element("id", "search").send_keys("img11")
    assert _names(browser) == [f"img11{i}.png" for i in range(10)]


def test_an_evaluation_page_shows_the_ranking_and_its_figures(browser, tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    _png(out / "evaluate_ranking.png", 1, side=120)
    write_evaluation(out, "ranking on <demo>", ["method", "ins-del"], [["gradcam", 0.514], ["random", -0.026]],
                     [("evaluate_ranking.png", "insertion minus deletion"), ("evaluate_curves.png", "gone")])
    _open(browser, build_report(out, show_progress=False))
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "evaluate_curves" not in e["message"]]
    section = browser.find_element("id", "evaluation")
    assert section.find_element("tag name", "h2").text == "ranking on <demo>"
    cells = [td.text for td in section.find_elements("css selector", "tbody td")]
    assert cells == ["gradcam", "0.514", "random", "-0.026"]
    loaded = browser.execute_script("return [...document.querySelectorAll('#evaluation img')].map(i => i.naturalWidth > 0)")
    assert loaded == [True, False]  # the deleted figure shows as broken, the page still works
    assert not browser.find_element("id", "controls").is_displayed()


# --- written by the commands ------------------------------------------------------------------------------

SAMPLES = Path(__file__).parents[1] / "plugins" / "xviz_zoo" / "assets" / "samples"


def test_explain_report_end_to_end_and_rebuilt(run_cli, browser, tmp_path):
    src = tmp_path / "photos"
    for name in ("winged", "striped"):  # class-named folders give the true class; one is put in the wrong one
        (src / name).mkdir(parents=True)
    shutil.copy(SAMPLES / "winged.png", src / "winged" / "a.png")
    shutil.copy(SAMPLES / "tailed.png", src / "striped" / "b.png")
    out = tmp_path / "out"
    code, stdout, err = run_cli("explain", "--model", "xviz-demo", "--method", "gradcam,gradcampp", "--topk", 2,
                                "--panel", "--report", "--out", out, src / "winged", src / "striped")
    assert code == 0, err
    assert f"wrote the report page {out / 'index.html'}" in stdout
    results = read_results(out)
    assert [r["shown"] for r in results.records] == [str(src / "winged" / "a.png"), str(src / "striped" / "b.png")]
    assert {o["method"] for o in results.records[0]["outputs"]} == {"gradcam", "gradcampp"}
    assert all((out / o["overlay"]).is_file() and (out / o["panel"]).is_file()
               for r in results.records for o in r["outputs"])
    settings = json.loads((out / SETTINGS).read_text())
    assert settings["methods"] == ["gradcam", "gradcampp"] and settings["layer"] == "features"
    _open(browser, out / "index.html")
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert len(_rows(browser)) == 2
    browser.find_element("id", "filter-misclassified").click()
    assert _names(browser) == [str(src / "striped" / "b.png")]  # a tailed image in the `striped` folder
    # a file deleted by hand and a labels file: `xviz report` rebuilds the page
    (out / results.records[0]["outputs"][0]["overlay"]).unlink()
    labels = tmp_path / "labels.csv"
    labels.write_text("b.png,tailed\n")
    code, stdout, err = run_cli("report", out, "--labels", labels)
    assert code == 0, err
    data = report_data(out, read_labels(labels), show_progress=False)
    assert len(data["missing"]) == 1 and data["rows"][1]["label"] == "tailed"


def test_report_command_on_a_folder_without_results_is_one_line(run_cli, tmp_path):
    code, out, err = run_cli("report", tmp_path)
    assert code == 2 and err.count("\n") == 1 and "holds no xviz-results.jsonl" in err


def test_evaluate_report(run_cli, browser, tmp_path):
    code, out, err = run_cli("evaluate", "--model", "xviz-demo", "--data", "synthetic", "--limit", 4, "--steps", 5,
                             "--method", "gradcam", "--metrics", "deletion,insertion", "--randomize", 0,
                             "--report", "--out", tmp_path)
    assert code == 0, err
    _open(browser, tmp_path / "index.html")
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    methods = [row.find_element("css selector", "td:nth-child(2)").text
               for row in browser.find_elements("css selector", "#evaluation tbody tr")]
    assert "gradcam" in methods
    assert browser.execute_script("return [...document.querySelectorAll('#evaluation img')].every(i => i.naturalWidth > 0)")
