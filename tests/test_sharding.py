"""`torchrun -m xviz explain|evaluate` on 2 gloo processes: the same files, table and numbers as one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xviz.cli import main
from xviz.sharding import block
from xviz.train.distributed import World

ROOT = Path(__file__).resolve().parents[1]

USER_MODEL = '''
import torch
from torch import nn


def build(num_classes=3):
    torch.manual_seed(0)  # every process builds the same network
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
'''
MODEL_FLAGS = ["--weights", "none", "--size", "24", "--mean", "0.5", "--std", "0.25", "--device", "cpu"]


@pytest.mark.parametrize("count,size,unit", [(7, 2, 1), (7, 3, 2), (2, 4, 1), (0, 2, 3), (10, 2, 4), (5, 1, 2)])
def test_blocks_cover_every_item_once_in_order_and_in_whole_units(count, size, unit):
    blocks = [block(count, World(rank, rank, size), unit) for rank in range(size)]
    assert [i for b in blocks for i in b] == list(range(count))
    assert all(b.start % unit == 0 for b in blocks if len(b))
    units = [-(-len(b) // unit) for b in blocks]
    assert max(units) - min(units) <= 1


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """A user's own model file and a folder of 7 images (not a multiple of 2) and one broken file."""
    root = tmp_path_factory.mktemp("sharding")
    (root / "net.py").write_text(USER_MODEL)
    rng = np.random.default_rng(0)
    for folder in ("photos", "clean"):
        (root / folder).mkdir()
    for i in range(7):
        image = Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8))
        image.save(root / "photos" / f"img{i}.png")
        image.save(root / "clean" / f"img{i}.png")
    (root / "photos" / "img3b.png").write_bytes(b"not a png")
    return root


def _torchrun(args, port, cwd):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "xviz", *map(str, args)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "xviz-results.jsonl").read_text().splitlines()]


def test_explain_on_two_processes_writes_what_one_process_writes(user_files, capsys, monkeypatch):
    monkeypatch.chdir(user_files)
    args = ["explain", "photos", "--model", "net.py:build", *MODEL_FLAGS, "--method", "gradcam,gradcampp",
            "--batch-size", "2", "--grid", "--report", "--topk", "2"]
    proc = _torchrun([*args, "--out", "two"], 29521, user_files)
    assert main([*args, "--out", "one"]) == 2  # the broken file: skipped, said, exit 2
    one_out = capsys.readouterr()
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert proc.stderr.count("Traceback") <= 1, proc.stderr[-3000:]  # torchrun's report of exit 2, none from ranks
    assert "exitcode  : 2" in proc.stderr and "rank      : 0" in proc.stderr
    one, two = user_files / "one", user_files / "two"
    written = sorted(p.name for p in one.iterdir() if p.suffix == ".png")
    assert len([n for n in written if not n.startswith("grid_")]) == 7 * 2 * 2
    assert sorted(p.name for p in two.iterdir() if p.suffix == ".png") == written
    for name in written:  # the same overlays and grids, byte for byte
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    table = lambda out: out[out.index("image"):].replace("two/", "one/")  # noqa: E731
    assert table(proc.stdout) == table(one_out.out)  # rank 0 prints every rank's rows, in order, once
    assert proc.stdout.count("wrote 28 overlay(s)") == 1
    assert proc.stderr.count("could not be read") == 1 and "1 of 8 image(s)" in proc.stderr
    assert [r["image"] for r in _records(two)] == [r["image"] for r in _records(one)]
    assert [r["outputs"] for r in _records(two)] == [r["outputs"] for r in _records(one)]
    assert (two / "index.html").is_file()
    assert not list(two.glob(".*"))  # no temporaries left


def test_evaluate_on_two_processes_gives_the_numbers_of_one_process(user_files, capsys, monkeypatch):
    monkeypatch.chdir(user_files)
    args = ["evaluate", "--model", "net.py:build", *MODEL_FLAGS, "--data", "clean", "--method", "gradcam,gradcampp",
            "--metrics", "deletion,insertion,drop,sanity,road", "--steps", "5", "--batch-size", "2", "--randomize", "1"]
    proc = _torchrun([*args, "--out", "two"], 29522, user_files)
    assert main([*args, "--out", "one"]) == 0
    one_out = capsys.readouterr().out
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = user_files / "one", user_files / "two"
    assert (two / "evaluate_results.csv").read_text() == (one / "evaluate_results.csv").read_text()
    results = [json.loads((d / "evaluate_settings.json").read_text()) for d in (one, two)]
    assert results[1]["processes"] == 2 and results[0]["processes"] == 1
    for method, values in results[0]["results"].items():  # sums and counts added, not means of means
        assert results[1]["results"][method] == pytest.approx(values, rel=1e-12)
    assert results[1]["results"]["gradcam"]["images"] == 7
    assert proc.stdout.count("ranked by") == 1  # said once, by rank 0
    table = lambda out: out[out.index("ranked by"):out.index("wrote")]  # noqa: E731
    assert table(proc.stdout) == table(one_out)
    for figure in ("evaluate_sanity.png", "evaluate_curves.png"):  # the same examples and curves
        assert (two / figure).read_bytes() == (one / figure).read_bytes(), figure


def test_more_processes_than_images_and_a_mistake_said_once(user_files, monkeypatch):
    monkeypatch.chdir(user_files)
    args = ["explain", "clean/img0.png", "--model", "net.py:build", *MODEL_FLAGS, "--out", "single"]
    proc = _torchrun(args, 29523, user_files)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote 1 overlay(s)") == 1 and (user_files / "single" / "img0_gradcam.png").is_file()
    proc = _torchrun([*args, "--layer", "nowhere"], 29524, user_files)
    assert proc.returncode != 0
    assert proc.stderr.count("xviz: error:") == 1 and "nowhere" in proc.stderr, proc.stderr[-3000:]
