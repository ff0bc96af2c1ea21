"""How fast the report page opens in headless Chromium for 1,000 and 10,000 images.

Each image has an input picture and one overlay per method (64 px noise PNGs, distinct files). Reports
the build time (``build_report``: thumbnails + data) and, in the browser, the time from navigation to the
first page of rows drawn, the size of ``index.html`` and ``report/data.js``, and the time to apply a
filter and a sort over all rows.

    python benchmarks/report_load.py [--sizes 1000 10000] [--methods 2]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from timing import median_time
from xviz.report import SETTINGS, append_records, build_report

CLASSES = [f"class{i:03d}" for i in range(100)]


def make_folder(out: Path, n: int, methods: int) -> None:
    rng = np.random.default_rng(0)
    src = out.parent / "images"
    src.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        image = src / f"img{i:05d}.png"
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(image, compress_level=1)
        outputs = []
        for m in range(methods):
            overlay = f"img{i:05d}_method{m}.png"
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(out / overlay, compress_level=1)
            outputs.append({"method": f"method{m}", "target": CLASSES[i % 100], "prob": float(rng.random()),
                            "rank": 1, "overlay": overlay, "panel": None})
        records.append({"image": str(image), "shown": image.name, "predicted": CLASSES[(i * 7) % 100],
                        "prob": float(rng.random()), "outputs": outputs})
    (out / SETTINGS).write_text('{"model": "benchmark", "class_names": %s}' % str(CLASSES).replace("'", '"'))
    append_records(out, records)


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--methods", type=int, default=2)
    args = parser.parse_args()
    driver = browser()
    print(f"{'images':>7} {'build s':>8} {'rebuild s':>9} {'open ms':>8} {'filter+sort ms':>14} {'index.html kB':>13} {'data.js kB':>10}")
    try:
        for n in args.sizes:
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "out"
                make_folder(out, n, args.methods)
                start = time.perf_counter()
                page = build_report(out, show_progress=False)
                build = time.perf_counter() - start
                rebuild = median_time(lambda: build_report(out, show_progress=False), repeats=1)
                url = page.resolve().as_uri()

                def open_page():
                    driver.get("about:blank")
                    driver.get(url)  # returns after the load event: scripts ran, first page drawn
                    assert len(driver.find_elements("css selector", "#body tr")) == min(50, n)

                opened = median_time(open_page, repeats=3, warmup=True)
                filtered = driver.execute_script("""
                    const t0 = performance.now();
                    const p = document.getElementById('filter-predicted'); p.selectedIndex = 1; p.dispatchEvent(new Event('change'));
                    const s = document.getElementById('sort'); s.value = 'prob-desc'; s.dispatchEvent(new Event('change'));
                    return performance.now() - t0;""")
                sizes = [page.stat().st_size / 1024, (out / "report" / "data.js").stat().st_size / 1024]
                print(f"{n:>7} {build:>8.1f} {rebuild:>9.2f} {opened * 1000:>8.0f} {filtered:>14.1f} {sizes[0]:>13.1f} {sizes[1]:>10.0f}",
                      flush=True)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
