"""``xviz evaluate``: argument parsing around :func:`xviz.evaluation.evaluate`, the printed table and the files."""

from __future__ import annotations

import argparse
import sys

from xviz import hookimpl
from xviz.commands import add_model_flags, model_arguments
from xviz.console import split_names, writable_folder
from xviz.errors import XvizError
from xviz.evaluation.names import BASELINES, COLUMNS, METRICS, check_metric_names

EXAMPLES = """examples:
  xviz evaluate --model xviz-demo --data synthetic --limit 120 --out eval-demo
  xviz evaluate --model xviz-demo --data synthetic --method gradcam,gradcampp --metrics deletion,insertion --out e
  xviz evaluate --checkpoint runs/cub/best.pt --data cub200 --root ~/data --limit 200 --out eval-cub
  xviz evaluate --model xviz-demo --data plugins/xviz_zoo/assets/samples --out eval-folder   (no pointing game)
  xviz evaluate --settings eval-demo/evaluate_settings.json --out eval-again   (the same run again)
"""



@hookimpl
def xviz_register_commands(subparsers):
    p = subparsers.add_parser("evaluate", help="measure how faithful explanation methods are (deletion/insertion, "
                              "average drop, pointing game, randomisation check)", epilog=EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(p, default_model=None)
    p.add_argument("--method", action="append", help="method(s), comma-separated or repeated "
                   "(default: every registered method that applies to the model)")
    p.add_argument("--settings", metavar="FILE", help="rerun the evaluation an evaluate_settings.json records "
                   "(flags given here override it)")
    p.add_argument("--data", metavar="DATASET|FOLDER", help="a registered dataset or a folder of images")
    p.add_argument("--root", help="where the dataset lies (default: the dataset's own place)")
    p.add_argument("--split", default="test", help="dataset split (default: test)")
    p.add_argument("--limit", type=int, help="evaluate N images, evenly spaced over the split (default: all)")
    p.add_argument("--metrics", help=f"comma-separated, from {', '.join(METRICS)} (default: all that apply except "
                   "sensitivity, which explains each image again per perturbation)")
    p.add_argument("--steps", type=int, default=20, help="points of the deletion/insertion curves (default: 20)")
    p.add_argument("--baseline", default="blur", choices=BASELINES,
                   help="what removed pixels become (default: blur, Gaussian with sigma = side / 16)")
    p.add_argument("--randomize", type=int, default=3,
                   help="how many top conv/linear layers the sanity check re-initialises (default: 3)")
    p.add_argument("--layer", help="target layer of the layer methods (default: the model's)")
    p.add_argument("--rank-by", help=f"column to rank by (default: ins_minus_del); one of {', '.join(COLUMNS)}")
    p.add_argument("--no-reference", action="store_true", help="leave out the random-map reference row")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw; each image's own seed "
                   "derives from it and the image's index or file name (default: 0)")
    p.add_argument("--tolerance", type=float, help="pointing game: a hit within this many pixels of the region "
                   "(default: 15 px scaled from 224 px to the input size)")
    p.add_argument("--out", required=True, help="folder for evaluate_results.csv, evaluate_ranking.png, "
                   "evaluate_curves.png, evaluate_sanity.png, evaluate_settings.json")
    p.add_argument("--batch-size", type=int, default=32, help="images explained together (default: 32)")
    p.add_argument("--report", action="store_true", help="also write OUT/index.html with the ranking and its figures")
    p.add_argument("--chunk", type=int, default=256, help="perturbed images per forward (default: 256)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=cmd_evaluate, evaluate_parser=p)


# the flags that decide what an evaluation measures: recorded in evaluate_settings.json, read by --settings
RERUN_FLAGS = ("model", "weights", "checkpoint", "method", "data", "root", "split", "limit", "metrics", "steps",
               "baseline", "randomize", "layer", "rank_by", "no_reference", "seed", "tolerance", "batch_size",
               "chunk")


def _apply_settings(args) -> None:
    """Fill the flags not given on the command line from the ``arguments`` of a settings file."""
    import json
    from pathlib import Path

    try:
        recorded = json.loads(Path(args.settings).read_text())["arguments"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise XvizError(f"cannot read the evaluation settings `{args.settings}` ({type(exc).__name__}: {exc}); "
                        "give an evaluate_settings.json written by `xviz evaluate`") from None
    parser = args.evaluate_parser
    _note_version_changes(json.loads(Path(args.settings).read_text()).get("versions") or {})
    for name in RERUN_FLAGS:
        if name in recorded and getattr(args, name) == parser.get_default(name):
            setattr(args, name, recorded[name])


def _note_version_changes(recorded: dict) -> None:
    """A note on stderr for each library whose version differs from the recorded run's (numbers may move)."""
    from xviz.evaluation.driver import metric_library_versions
    from xviz.explanation import library_versions

    now = {**library_versions(), **metric_library_versions()}
    for name, was in recorded.items():
        if name in now and now[name] != was:
            print(f"note: {name} is {now[name]} here, {was} in the recorded run; numbers may differ slightly",
                  file=sys.stderr)


def _data_of_run(args, model):
    """``--checkpoint RUN --data ROOT``, RUN trained on a dataset read from a folder: that dataset, read from
    ROOT, with the split its run folder recorded (an imagefolder run's held-out images, labelled); None
    otherwise (ROOT is then a folder of unlabelled images)."""
    from pathlib import Path

    from xviz.datasets import run_dataset

    trained_on = ((model.checkpoint or {}).get("config") or {}).get("data")
    if not args.checkpoint or not trained_on or not Path(args.data).is_dir():
        return None
    found = run_dataset(model, args.data, args.split, model.preprocessing.tensor, args.pm)
    return (found[0], f"`{found[1]}` `{args.data}` ({args.split})") if found else None


def cmd_evaluate(args) -> int:
    """One process, or under torchrun one block of the batches per rank, the sums added (:mod:`xviz.sharding`)."""
    from xviz.models import torch_device
    from xviz.sharding import joined

    with joined(torch_device(args.device).type) as world:
        return _evaluate(args, world)


def _evaluate(args, world) -> int:
    from xviz.evaluation import applicable_methods, check_metrics, evaluate, load_data
    from xviz.explainer import resolve_methods
    from xviz.models import load_model, torch_device

    if args.settings:
        _apply_settings(args)
    if not args.data:
        raise XvizError("--data is required (a registered dataset or a folder of images), or --settings FILE")
    device = torch_device(args.device)
    metrics = split_names(args.metrics) if args.metrics else None
    check_metric_names(metrics)
    names = split_names(args.method) if args.method else None
    if names:
        resolve_methods(names, args.pm)  # unknown names fail before the model loads
    if args.rank_by and args.rank_by not in COLUMNS:
        raise XvizError(f"unknown column `{args.rank_by}` for --rank-by: choose one of {', '.join(COLUMNS)}")
    out = writable_folder(args.out)
    model = load_model(**model_arguments(args)).to(device)
    dataset, described = _data_of_run(args, model) or load_data(args.data, model, args.split, args.root, args.pm)
    check_metrics(metrics, dataset, described)
    if names is None and len(dataset) and world.main:
        _, skipped = applicable_methods(model, dataset[0][0][None].to(device), None, args.layer, args.pm)
        for name, why in skipped.items():
            print(f"skipped `{name}`: {why}", file=sys.stderr)
    results = evaluate(model, names, dataset, metrics=metrics, limit=args.limit, batch_size=args.batch_size,
                       steps=args.steps, baseline=args.baseline, randomize=args.randomize, layer=args.layer,
                       rank_by=args.rank_by, reference=not args.no_reference, chunk=args.chunk, seed=args.seed,
                       pm=args.pm, dataset_name=described, tolerance=args.tolerance, progress=world.main,
                       world=world)
    if not world.main:  # every rank holds the same results; rank 0 says and writes them
        return 0
    results.settings["arguments"] = {name: getattr(args, name) for name in RERUN_FLAGS}
    s = results.settings
    print(f"{model.name} on {described}, {s['images']} images, the predicted class explained; "
          f"ranked by {COLUMNS[results.rank_by][0]} ({'higher' if COLUMNS[results.rank_by][1] else 'lower'} is better)")
    print(results.table())
    notes = [f"deletion/insertion: {s['steps']} steps, baseline {s['baseline']}"
             + (f" (sigma {s['blur_sigma']:.1f} px)" if s["blur_sigma"] else "")] if "deletion" in s["metrics"] \
        or "insertion" in s["metrics"] else []
    if "pointing" in s["metrics"]:
        notes.append(f"pointing: tolerance {s['pointing_tolerance']:.1f} px, any tied maximum")
    if s.get("road_percentiles"):
        notes.append(f"ROAD: percentiles {', '.join(str(p) for p in s['road_percentiles'])}, noise {s['road_noise']}")
    if s["randomized_layers"]:
        notes.append(f"randomised: {', '.join(s['randomized_layers'])}; FLAGGED when rand. spearman >= {s['flag_above']}")
    if notes:
        print("; ".join(notes))
    title = f"{model.name} on {described}, {s['images']} images"
    written = [results.write_csv(out / "evaluate_results.csv"),
               results.bar_chart(out / "evaluate_ranking.png",
                                 f"{title}; ranked by {COLUMNS[results.rank_by][0]}; hatched: flagged"),
               results.write_settings(out / "evaluate_settings.json")]
    if any("deletion" in r.curves or "insertion" in r.curves for r in results.rows):
        written.append(results.curves_chart(out / "evaluate_curves.png", title))
    if results.examples.get("maps"):
        written.append(results.sanity_figure(out / "evaluate_sanity.png", f"{title}: maps of the trained model vs "
                                             f"randomised {', '.join(s['randomized_layers'])}"))
    print(f"wrote {', '.join(str(p) for p in written)} in {s['seconds']:.0f} s")
    if args.report:
        from xviz.report import build_report, write_evaluation

        captions = {"evaluate_ranking.png": "ranking", "evaluate_curves.png": "deletion and insertion curves",
                    "evaluate_sanity.png": "sanity check: maps of the trained and of the randomised model"}
        write_evaluation(out, title, *results.ranking(),
                         [(p.name, captions[p.name]) for p in written if p.name in captions])
        print(f"wrote the report page {build_report(out)} (open it in a browser)")
    return 0
