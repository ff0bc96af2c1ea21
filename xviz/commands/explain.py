"""``xviz explain``: argument parsing around the explain pipeline (:func:`xviz.explainer.explain_batches`:
images decoded in DataLoader workers) and the writer of its files (:class:`xviz.outputs.OverlayWriter`, on
:class:`xviz.outputs.BackgroundWrites` threads): decoding, computing and writing overlap."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from datetime import datetime
from pathlib import Path

from xviz import hookimpl
from xviz.commands import add_model_flags, complete_methods, model_arguments
from xviz.console import split_names, table, writable_folder
from xviz.errors import XvizError

EXAMPLES = """examples:
  xviz explain --model xviz-demo --method gradcampp plugins/xviz_zoo/assets/samples
  xviz explain --method gradcam,gradcampp --topk 3 cat.jpg          (resnet50, ImageNet weights)
  xviz explain --model vgg16 --layer features.29 --target "water ouzel" bird.jpg
  xviz explain --checkpoint runs/cub/best.pt --panel --out figures photos/
"""


def _images(args) -> list[Path]:
    """The image files to explain: folders expanded, each file once (however often it is named)."""
    from xviz.images import list_images, read_image

    seen, paths = set(), []
    for path in list_images(args.images):
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            paths.append(path)
    if len(paths) == 1:
        read_image(paths[0])  # a single bad image is the whole error
    return paths


@contextlib.contextmanager
def _interruptible(folder: Path):
    """Treat SIGTERM like Ctrl-C while writing, and leave no partial file behind either way."""
    from xviz.outputs import remove_temporaries

    def stop(signum, frame):
        raise KeyboardInterrupt

    mine = threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    previous = signal.signal(signal.SIGTERM, stop) if mine else None
    try:
        yield
    except KeyboardInterrupt:
        remove_temporaries(folder)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _settings(args, model, methods) -> dict:
    """What the report page's header shows and what a rerun needs: the command, model, methods, targets."""
    import shlex

    from xviz.explanation import library_versions

    settings = {"command": "xviz " + " ".join(map(shlex.quote, sys.argv[1:])) if Path(sys.argv[0]).name in ("xviz", "__main__.py") else None,
                "model": model.name, "checkpoint": args.checkpoint, "weights": args.weights,
                "methods": [m.name for m in methods], "target": args.target, "topk": args.topk,
                "device": str(args.device), "class_names": list(model.class_names), "versions": library_versions(),
                "started": datetime.now().isoformat(timespec="seconds")}
    if args.layer:
        settings["layer"] = args.layer
    return settings


def _write_all(args, batches, writer, total, stems, one_folder, settings, out, world, held) -> int:
    """Write each batch's files on writer threads while the next batch is computed; the table, report
    records and progress follow in input order (under torchrun the records are ``held`` for rank 0 to
    write at the end). Returns the number of inputs skipped as unreadable."""
    from tqdm import tqdm

    from xviz.outputs import BackgroundWrites
    from xviz.report import append_records

    def collect(done, bar):
        for written in done:
            writer.collect(written)
            bar.update(len(written.records))
        if args.report and writer.records:
            if world.distributed:
                held.extend(writer.take_records())  # rank 0 writes all ranks' records, in order, at the end
            else:
                append_records(out, writer.take_records())

    skipped, announced, writes = 0, not world.main, None
    with _interruptible(out), tqdm(total=total, unit="img", desc="explaining", disable=total < 2 or not world.main,
                                   file=sys.stderr) as bar, contextlib.ExitStack() as stack:
        for batch in batches:
            for _, why in batch.skipped:
                tqdm.write(f"xviz: skipped: {why}", file=sys.stderr)
            skipped += len(batch.skipped)
            bar.update(len(batch.skipped))
            if batch.layer and batch.layer.how != "given" and not announced:
                tqdm.write(batch.layer.describe(), file=sys.stderr)
                announced = True
            if batch.layer and "layer" not in settings:
                settings["layer"] = batch.layer.name
            if not batch.views:
                continue
            if writes is None:  # pyplot draws on one thread at a time
                threads = 1 if writer.uses_pyplot(batch.explanations) else args.writers
                writes = stack.enter_context(BackgroundWrites(threads))
            shown = [Path(name).name if one_folder else name for name in batch.names]
            collect(writes.submit(writer.batch, batch.names, [stems[n] for n in batch.names], shown, batch.views,
                                  batch.explanations), bar)
        if writes is not None:
            collect(writes.finish(), bar)
    return skipped


def cmd_explain(args) -> int:
    """One process, or under torchrun one block of the images per rank (:mod:`xviz.sharding`)."""
    from xviz.models import torch_device
    from xviz.sharding import joined

    with joined(torch_device(args.device).type) as world:
        return _explain(args, world)


def _explain(args, world) -> int:
    from xviz.explainer import check_targets, explain_batches, resolve_methods
    from xviz.models import load_model, torch_device
    from xviz.outputs import OverlayWriter, output_stems, remove_temporaries, write_failure
    from xviz.render import check_alpha, get_cmap
    from xviz.report import append_records, build_report, read_labels, write_settings
    from xviz.sharding import block, merge_writers

    device = torch_device(args.device)
    methods = resolve_methods(split_names(args.method, default=["gradcam"]), args.pm)
    get_cmap(args.cmap)
    check_alpha(args.alpha)
    for flag, value in (("--batch-size", args.batch_size), ("--writers", args.writers)):
        if value < 1:
            raise XvizError(f"`{flag} {value}` must be at least 1")
    if args.workers is not None and args.workers < 0:
        raise XvizError(f"`--workers {args.workers}` must be 0 (decode in the main process) or more")
    out = writable_folder(args.out)
    paths = _images(args)
    model = load_model(**model_arguments(args)).to(device)
    check_targets(args.target, args.topk, model.class_names, len(model.class_names))
    if not world.distributed:  # with several ranks, once all have written (another rank may be writing now)
        remove_temporaries(out)
    stems = dict(zip(map(str, paths), output_stems([str(p) for p in paths])))
    one_folder = len(args.images) == 1 and Path(args.images[0]).is_dir()
    writer = OverlayWriter(out, args.alpha, args.cmap, args.panel, args.grid, args.save_raw, args.format,
                           args.colorbar)
    settings = _settings(args, model, methods)
    labels = read_labels(args.labels) if args.labels else {}
    if args.report and world.main:  # the page's data, written as the run goes, so an interrupted run can be looked at too
        write_settings(out, settings)
    mine = [paths[i] for i in block(len(paths), world)]
    batches = explain_batches(model, mine, methods, layer=args.layer, target=args.target, topk=args.topk,
                              batch_size=args.batch_size, pm=args.pm, skip_unreadable=True, fast=args.autocast or args.fast,
                              compile=args.compile, workers=args.workers) if mine else []
    held: list[dict] = []
    try:
        skipped = _write_all(args, batches, writer, len(mine), stems, one_folder, settings, out, world, held)
        if world.distributed:
            held, skipped = merge_writers(world, writer, held, skipped)
            if not world.main:  # rank 0 says and answers for the run (an early exit 2 here would stop it)
                return 0
            append_records(out, held)
            remove_temporaries(out)
        grids = writer.write_grids()
        if args.report:
            write_settings(out, dict(settings, labels=labels, finished=datetime.now().isoformat(timespec="seconds")))
            page = build_report(out, show_progress=len(paths) > 1)
    except OSError as exc:  # the bar is closed by now: the message gets its own line
        raise write_failure(exc, out, writer.overlays) from None
    if writer.rows:
        print(table(writer.rows, ["image", "predicted", "prob", "explained target (prob)", "method", "overlay"]))
        print(f"wrote {writer.overlays} overlay(s) to {out}/")
    for path, count in grids:
        print(f"wrote a grid of {count} overlay(s) to {path}")
    if args.report:
        print(f"wrote the report page {page} (open it in a browser)")
    if skipped:
        print(f"xviz: error: {skipped} of {len(paths)} image(s) could not be read and were skipped "
              "(see the lines above)", file=sys.stderr)
        return 2
    return 0


@hookimpl
def xviz_register_commands(subparsers):
    p = subparsers.add_parser("explain", help="explain images and write overlays", epilog=EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", metavar="IMG|DIR", help="image files or folders")
    p.add_argument("--method", action="append", help="method(s), comma-separated or repeated (default: gradcam)").completer = complete_methods
    add_model_flags(p)
    p.add_argument("--layer", help="target layer name (default: the model's, or the last spatial layer); several "
                   "as `a,b`: captured in one pass, each method's per-layer maps fused (mean of normalised maps)")
    p.add_argument("--target", help="class index or name to explain (default: the predicted class)")
    p.add_argument("--topk", type=int, default=1, help="explain each image's top K classes")
    p.add_argument("--out", default="xviz-out", help="output folder (default: xviz-out)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity in the overlay (0-1)")
    p.add_argument("--cmap", help="matplotlib colormap (default: jet; bwr, centred on zero, for signed attributions)")
    p.add_argument("--colorbar", action="store_true", help="draw a colour scale beside each overlay (panels, grids "
                   "and per-layer figures always have one)")
    p.add_argument("--panel", action="store_true", help="also write image | heatmap | overlay panels")
    p.add_argument("--grid", action="store_true", help="also write one grid of all overlays per method")
    p.add_argument("--save-raw", action="store_true", help="also write the raw feature-size maps as .npy")
    p.add_argument("--report", action="store_true", help="also write OUT/index.html: every image and method side by "
                   "side in the browser (filters, sort, full-size panels)")
    p.add_argument("--format", choices=["png", "jpg"], default="png", help="overlay file format: png (default; "
                   "lossless, fast compression) or jpg (quality 90, smaller and faster to write)")
    p.add_argument("--fast", action="store_true", help="the fast path: weights and inputs in channels_last "
                   "(CAM maps within 1e-5 of fp32; see the performance page)")
    p.add_argument("--autocast", choices=["bf16", "fp16"], help="--fast plus the forward pass in this precision "
                   "(faster on GPUs with tensor cores; maps can move by a few 1e-2)")
    p.add_argument("--compile", action="store_true", help="run the forward pass through torch.compile (the "
                   "first batch pays the compilation)")
    p.add_argument("--workers", type=int, help="processes decoding images while the model runs (default: up to "
                   "2 when there is more than one batch; 0: decode in the main process)")
    p.add_argument("--writers", type=int, default=2, help="threads writing files while the model runs (default 2)")
    p.add_argument("--labels", metavar="FILE", help="true classes for the report (CSV `file,class` or JSON); images in "
                   "class-named folders are labelled by their folder")
    p.set_defaults(func=cmd_explain)
