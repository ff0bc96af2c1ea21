"""``xviz misclassified``: a grid of the images a model gets wrong, titled Predicted / Actual, each with
the map of the predicted class."""

from __future__ import annotations

from xviz import hookimpl
from xviz.commands import add_model_flags, model_arguments
from xviz.console import png_path
from xviz.errors import XvizError


def cmd_misclassified(args) -> int:
    import torch

    from xviz.datasets import load_dataset, run_dataset
    from xviz.evaluation.mistakes import find_mistakes
    from xviz.explainer import explain_tensors, resolve_methods
    from xviz.models import load_model, torch_device
    from xviz.render import check_alpha, get_cmap, grid, save_png
    from xviz.train.config import parse_groups

    if args.count < 1:
        raise XvizError(f"`--count {args.count}` must be at least 1")
    if "," in args.method:
        raise XvizError(f"`--method {args.method}`: give one method")
    [method] = resolve_methods([args.method], args.pm)
    get_cmap(args.cmap)
    check_alpha(args.alpha)
    out = png_path(args.out)
    model = load_model(**model_arguments(args))
    model.to(torch_device(args.device)).module.eval()
    options = parse_groups(args.dataset_options or "", "--dataset-options")
    found = run_dataset(model, args.data, args.split, model.preprocessing.view, args.pm) \
        if args.dataset is None and args.checkpoint else None
    if found is not None:  # the checkpoint's own dataset and split (the run folder's split.json)
        data, args.dataset = found
        class_names = list(getattr(data, "classes", None) or model.class_names)
    else:
        args.dataset = args.dataset or "synthetic"
        try:
            data, spec = load_dataset(args.dataset, args.split, root=args.data, pm=args.pm,
                                      transform=model.preprocessing.view, **options)
        except TypeError as exc:
            raise XvizError(f"dataset `{args.dataset}` does not accept the options {options}: {exc}") from None
        class_names = list(getattr(data, "classes", None) or spec.class_names)
    if len(class_names) != len(model.class_names):
        raise XvizError(f"the model has {len(model.class_names)} classes and dataset `{args.dataset}` "
                        f"{len(class_names)}: give a checkpoint trained on it")
    mistakes, total = find_mistakes(model, data, class_names, args.batch_size, args.limit)
    print(f"{len(mistakes)} of {total} {args.split} images misclassified "
          f"({100 * (1 - len(mistakes) / max(total, 1)):.2f} % accuracy)")
    if not mistakes:
        print("nothing to draw: every image is classified correctly")
        return 0
    shown_ = mistakes[:args.count]
    views = [data[m.index][0] for m in shown_]
    batch = torch.stack([model.preprocessing.normalize(v) for v in views])
    explanations = explain_tensors(model, batch, [method], layer=args.layer, pm=args.pm)  # the predicted class
    titles = [f"Predicted: {m.predicted} ({m.probability:.0%})\nActual: {m.actual}" for m in shown_]
    if len(explanations) == 1:
        [exp] = explanations
        figure = grid(views, list(exp.maps[:, 0]), titles, args.columns, args.alpha, args.cmap, exp.signed)
        what = f"{method.name} of the predicted class"
    else:  # a map per layer (attention): a row per image
        figure = layer_rows(views, explanations, titles, args.alpha, args.cmap)
        what = f"{method.name} of {len(explanations)} layers"
    print(f"wrote {save_png(figure, out)} ({len(shown_)} images, {what})")
    return 0


def layer_rows(views, explanations, titles, alpha: float, cmap: str):
    """A row per image: the image (titled Predicted / Actual), then its map of each layer overlaid."""
    from matplotlib.figure import Figure

    from xviz.render import overlay

    ncols = 1 + len(explanations)
    fig = Figure(figsize=(2.1 * ncols, 2.25 * len(views) + 0.2))
    axes = fig.subplots(len(views), ncols, squeeze=False)
    for r, (view, title) in enumerate(zip(views, titles)):
        axes[r][0].imshow(view)
        axes[r][0].set_title(title, fontsize=9)
        for c, exp in enumerate(explanations, start=1):
            axes[r][c].imshow(overlay(view, exp.maps[r, 0], alpha, cmap, exp.signed))
            if r == 0:
                axes[r][c].set_title(f"{exp.method}: {exp.layer}", fontsize=9)
        for ax in axes[r]:
            ax.axis("off")
    fig.tight_layout()
    return fig


@hookimpl
def xviz_register_commands(subparsers):
    p = subparsers.add_parser("misclassified", help="grid of misclassified images titled Predicted / Actual, with CAMs")
    add_model_flags(p, default_model="xviz-demo")
    p.add_argument("--dataset", help="registered dataset (default: the one the --checkpoint was trained on, with "
                   "the split its run folder recorded; else synthetic)")
    p.add_argument("--data", help="the dataset's folder (e.g. the ROOT of an imagefolder run)")
    p.add_argument("--dataset-options", metavar="A=1,B=2", help="e.g. size=1000,seed=2 for synthetic")
    p.add_argument("--split", default="test", help="train or test (default: test, the run's held-out images)")
    p.add_argument("--limit", type=int, help="look at the first N images only")
    p.add_argument("--method", default="gradcampp", help="the map drawn on each image (default: gradcampp)")
    p.add_argument("--layer", help="target layer (default: the model's)")
    p.add_argument("--count", type=int, default=12, help="how many mistakes to draw (default: 12)")
    p.add_argument("--columns", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--cmap", default="jet")
    p.add_argument("--out", default="misclassified.png", help="the figure (default: misclassified.png)")
    p.set_defaults(func=cmd_misclassified)
