"""A folder at the model's own rate: ``xviz explain`` on generated JPEGs against the compute-only floor.

    .venv/bin/python benchmarks/folder_speed.py > benchmarks/folder_speed_cpu.txt

The floor is a hand-written loop doing only what no explainer can avoid: forward + ``autograd.grad``
to the target layer (gradcam's cost) on pre-decoded, preprocessed tensors, ``--batch-size`` at a time,
for as many images as the folder holds. ``xviz explain`` runs as a user runs it (a fresh process: plugin
loading, decoding, preprocessing, the same compute, writing every overlay). The two are interleaved
``--rounds`` times so a load from other users of the machine falls on both; the ratio is
``floor seconds / xviz seconds`` (1.0: the folder runs at the model's own rate).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def generate(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    """``count`` JPEGs (quality 90) of smooth random colour fields with noise, seeded; kept if present."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / f"img{i:05d}.jpg"
        paths.append(path)
        if path.exists():
            continue
        coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize(size, Image.BICUBIC), dtype=np.int16)
        noisy = np.clip(field + rng.integers(-20, 21, field.shape, dtype=np.int16), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(path, quality=90)
    return paths


def floor_seconds(model: torch.nn.Module, layer: torch.nn.Module, batches: list[torch.Tensor], count: int,
                  batch_size: int) -> float:
    """Seconds of forward + autograd.grad (to ``layer``'s output, top-1 class) for ``count`` images."""
    captured = {}

    def hook(module, args, output):
        captured["a"] = output.detach().requires_grad_(True)
        return captured["a"]

    handle = layer.register_forward_hook(hook)
    start = time.perf_counter()
    try:
        for i, done in enumerate(range(0, count, batch_size)):
            x = batches[i % len(batches)][:count - done]
            logits = model(x)
            scores = logits.gather(1, logits.detach().argmax(1, keepdim=True))
            torch.autograd.grad(scores.sum(), captured["a"])
    finally:
        handle.remove()
    return time.perf_counter() - start


def peak_rss_mib() -> float:
    """The largest peak RSS of any finished child process (xviz, its decoding workers) so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def xviz_seconds(folder: Path, out: Path, args, count: int | None = None, source: Path | None = None) -> float:
    """Wall seconds of ``xviz explain`` on ``folder`` in a fresh process; ``source``: run the xviz (and
    bundled plugins) of another source tree instead, e.g. an earlier version for a before/after."""
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ)
    if source:
        env["PYTHONPATH"] = os.pathsep.join([str(source), str(source / "plugins"), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "xviz", "explain", "--model", args.model, "--weights", "none", "--method",
               "gradcam", "--layer", args.layer, "--batch-size", str(args.batch_size), "--out", str(out),
               *args.flags.split(), str(folder)]
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"xviz explain failed: {done.stderr[-2000:]}")
    written = len(list(out.glob("*_gradcam.*")))
    if written != (count or args.images):
        sys.exit(f"xviz explain wrote {written} overlays for {count or args.images} images")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--flags", default="", help="extra flags for xviz explain, e.g. '--format jpg'")
    parser.add_argument("--folder", type=Path, help="where the JPEGs are kept (default: a temporary folder)")
    parser.add_argument("--before", type=Path, metavar="SRC", help="also time the xviz of this source tree (e.g. "
                        "`git archive main | tar -x -C SRC`), interleaved, as a before/after")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from xviz.capture import find_layer, preserved_state
    from xviz.images import read_image
    from xviz.models import load_model

    scratch = Path(tempfile.mkdtemp(prefix="xviz-folder-speed-"))
    folder = args.folder or scratch / "images"
    paths = generate(folder, args.images, (1024, 768))
    loaded = load_model(args.model, weights="none")
    batch = torch.stack([loaded.preprocessing.tensor(read_image(p)) for p in paths[:args.batch_size]])
    batches = [batch]  # one pre-decoded batch, reused: the compute does not depend on the pixels
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}; load average before {os.getloadavg()[0]:.1f}")
    print(f"{args.images} JPEGs 1024x768, {args.model} gradcam at `{args.layer}`, batch {args.batch_size}, "
          f"xviz flags: `{args.flags or '(none)'}`")
    print(f"{'round':>5} {'floor s':>8} {'xviz s':>8} {'floor img/s':>12} {'xviz img/s':>11} {'ratio':>6}"
          + (f" {'before s':>9} {'ratio':>6}" if args.before else ""))
    floors, xvizs, befores = [], [], []
    small = scratch / "small"
    small.mkdir()
    for path in paths[:100]:
        (small / path.name).symlink_to(path.resolve())
    try:
        xviz_seconds(small, scratch / "out", args, count=len(paths[:100]))
        print(f"memory: peak RSS of xviz explain on {len(paths[:100])} images {peak_rss_mib():.0f} MiB", flush=True)
        with preserved_state(loaded.module) as model:
            layer = find_layer(model, args.layer)
            floor_seconds(model, layer, batches, args.batch_size, args.batch_size)  # warm-up
            for r in range(args.rounds):
                floors.append(floor_seconds(model, layer, batches, args.images, args.batch_size))
                xvizs.append(xviz_seconds(folder, scratch / "out", args))
                if args.before:
                    befores.append(xviz_seconds(folder, scratch / "out", args, source=args.before))
                print(f"{r + 1:5d} {floors[-1]:8.1f} {xvizs[-1]:8.1f} {args.images / floors[-1]:12.1f} "
                      f"{args.images / xvizs[-1]:11.1f} {floors[-1] / xvizs[-1]:6.2f}"
                      + (f" {befores[-1]:9.1f} {floors[-1] / befores[-1]:6.2f}" if args.before else ""), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"memory: peak RSS of xviz explain on {args.images} images {peak_rss_mib():.0f} MiB (any process)")
    print(f"all rounds: xviz explain runs at {sum(floors) / sum(xvizs):.2f}x the compute-only rate "
          f"(target >= 0.8 on a 2-core CPU); load average after {os.getloadavg()[0]:.1f}")
    if args.before:
        print(f"before: {sum(floors) / sum(befores):.2f}x the compute-only rate ({args.before})")


if __name__ == "__main__":
    main()
