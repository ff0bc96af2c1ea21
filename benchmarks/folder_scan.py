"""What checking a folder of the user's images costs: the header pre-scan ``imagefolder`` runs when it is
built (``xviz_zoo.folders.header_problem``) against decoding every image (what a full pre-scan would
cost, and what one epoch costs anyway), side by side on the same generated JPEGs.

    python benchmarks/folder_scan.py [--files 2000] [--side 256] [--decode 500] [--folder /tmp/xviz-scan]

Decoding is timed on the first ``--decode`` files and scaled to all of them.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from xviz.images import read_image
from xviz_zoo.folders import header_problem, image_files


def make_folder(folder: Path, files: int, side: int) -> None:
    """``files`` JPEGs in 10 class folders (skipped when the folder already holds them)."""
    if len(image_files(folder)) == files if folder.is_dir() else False:
        return
    base = np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8)
    for i in range(files):
        path = folder / f"c{i % 10}" / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.roll(base, i, 0)).save(path, quality=85)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--decode", type=int, default=500)
    parser.add_argument("--folder", default="/tmp/xviz-scan")
    args = parser.parse_args()
    folder = Path(args.folder)
    make_folder(folder, args.files, args.side)
    files = image_files(folder)
    began = time.perf_counter()
    problems = [f for f in files if header_problem(f)]
    scan = time.perf_counter() - began
    began = time.perf_counter()
    for f in files[:args.decode]:
        read_image(f)
    decode = (time.perf_counter() - began) * len(files) / min(args.decode, len(files))
    print(f"{len(files)} JPEGs of {args.side}x{args.side} px ({len(problems)} unreadable)")
    print(f"header pre-scan  {scan:8.2f} s  {1000 * scan / len(files):.3f} ms/file  1.00x")
    print(f"full decode      {decode:8.2f} s  {1000 * decode / len(files):.3f} ms/file  {decode / scan:.1f}x")


if __name__ == "__main__":
    main()
