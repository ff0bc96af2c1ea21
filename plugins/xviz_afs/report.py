"""``xviz afs-report``: which channels the AFS gates keep, and what that saves; ``xviz afs-update``:
set the gates' s / m masks from a pass over data and write the masked checkpoint.

Figures: a heatmap of channel importance per gated layer (mean over the images, each layer scaled
to its maximum), a bar chart of the fraction of channels computed per layer (masked layers marked),
and the spatial maps of the top channels of one layer on one image. Tables: per-channel statistics
(CSV) and estimated MACs, dense vs gated, per layer and in total.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch

from xviz.errors import XvizError
from xviz.render import add_colorbar, atomic_write, overlay, save_png

from xviz_afs.gates import channel_stats, gates, recording, require_gates, update_masks
from xviz_afs.sparse import estimate_macs, output_sizes


def importance_figure(stats: dict, title: str = ""):
    """Rows: gated layers; columns: channels; colour: mean importance / the layer's maximum."""
    import matplotlib.pyplot as plt

    names = list(stats)
    width = max(len(stats[n]["importance"]) for n in names)
    grid = np.full((len(names), width), np.nan)
    for i, n in enumerate(names):
        v = stats[n]["importance"].numpy()
        grid[i, : len(v)] = v / v.max() if v.max() > 0 else v
    fig, ax = plt.subplots(figsize=(7.2, 0.3 * len(names) + 1.6))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#eeeeee")
    im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(names)), names, fontsize=8.5)
    ax.set_xlabel("output channel")
    ax.set_title(title or "AFS channel importance (mean over images, per layer / its maximum)", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01)
    return fig


def kept_figure(stats: dict, ratios: dict, title: str = ""):
    """Bar per gated layer: mean fraction of channels computed (winner-take-all and m); the gate's
    ratio d as a tick; masked channels (m = 0) stacked in grey."""
    import matplotlib.pyplot as plt

    names = list(stats)
    kept = [float(stats[n]["kept"].mean()) for n in names]
    masked = [float(1 - stats[n]["m"].mean()) for n in names]
    fig, ax = plt.subplots(figsize=(7.2, 4.4))
    x = np.arange(len(names))
    ax.bar(x, kept, color="#3b7dd8", label="computed (kept by winner-take-all and m)")
    ax.bar(x, masked, bottom=[1 - m for m in masked], color="#bbbbbb", label="masked (m = 0)")
    ax.scatter(x, [ratios[n] for n in names], marker="_", s=200, color="black", label="ratio d", zorder=3)
    for i, k in enumerate(kept):
        if k == 0:
            ax.text(i, 0.02, "skipped", rotation=90, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, names, rotation=60, ha="right", fontsize=8.5)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction of channels")
    ax.set_title(title or "channels computed per gated layer", fontsize=10, pad=30)
    ax.legend(fontsize=8.5, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, frameon=False)  # above the bars
    fig.tight_layout()
    return fig


def top_channels(records: dict, layer: str, top: int = 8, image: int = 0) -> list[tuple[int, float, torch.Tensor]]:
    """``(channel, importance, map)`` of ``layer``'s ``top`` most important channels on one image of the
    recorded batch, among those that reach the output (kept by winner-take-all and ``m``: a non-zero
    gate scale): importance ``h_c``, map ``ReLU(out_c)`` (h, w) of the gated output."""
    r = records[layer]
    importance = (r["importance"][image] * (r["scale"][image] != 0)).cpu()
    output = torch.relu(r["output"][image]).cpu()
    return [(int(c), float(importance[c]), output[c]) for c in importance.argsort(descending=True)[:top]
            if importance[c] > 0]


def top_channels_figure(image: np.ndarray, records: dict, layer: str, top: int = 8, title: str = ""):
    """The image, then the spatial maps of ``layer``'s ``top`` most important kept channels overlaid."""
    import matplotlib.pyplot as plt

    chosen = top_channels(records, layer, top)
    ncols = min(3, len(chosen) + 1)  # rows of three: legible at a page's width (~700 px)
    nrows = -(-(len(chosen) + 1) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.3 * ncols, 2.45 * nrows + 0.3), squeeze=False)
    axes = axes.ravel()
    axes[0].imshow(image)
    axes[0].set_title("image", fontsize=10)
    for ax, (c, importance, fired) in zip(axes[1:], chosen):
        m = fired.numpy()
        m = (m - m.min()) / (m.max() - m.min()) if m.max() > m.min() else np.zeros_like(m)
        ax.imshow(overlay(image, m, alpha=0.5))
        ax.set_title(f"channel {c}: h = {importance:.2f}", fontsize=10)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title or (f"{layer}: top kept channels (importance h)" if chosen
                           else f"{layer}: no channel reaches the output (all masked or dropped)"), fontsize=11)
    fig.tight_layout()
    if chosen:
        add_colorbar(fig, axes[: len(chosen) + 1])
    return fig


def macs_table(report, top: int | None = None) -> str:
    rows = [f"{'layer':<18} {'dense MMACs':>12} {'gated MMACs':>12} {'computed':>9}"]
    for name, (dense, gated, frac) in report.per_layer.items():
        rows.append(f"{name:<18} {dense / 1e6:>12.2f} {gated / 1e6:>12.2f} {frac:>8.0%}")
    rows.append(f"{'network':<18} {report.dense / 1e6:>12.1f} {report.gated / 1e6:>12.1f} "
                f"   {report.reduction:.2f}x fewer MACs" + (f"; skipped: {', '.join(report.skipped)}" if report.skipped else ""))
    return "\n".join(rows)


def write_channels_csv(stats: dict, path: Path) -> Path:
    def write(tmp):
        buffer = io.StringIO()
        w = csv.writer(buffer, lineterminator="\n")
        w.writerow(["layer", "channel", "importance", "variance", "pi", "computed", "m", "s"])
        for name, st in stats.items():
            for c in range(len(st["importance"])):
                w.writerow([name, c] + [f"{float(st[k][c]):.6g}" for k in ("importance", "variance", "pi", "kept", "m", "s")])
        Path(tmp).write_text(buffer.getvalue())
    return atomic_write(path, write)


def default_layer(model, image_size: int) -> str:
    """The deepest gated layer whose output is at least 7 x 7 (its channel maps are worth a look)."""
    sizes = output_sizes(model, image_size)
    names = list(gates(model))
    wide = [n for n in names if min(sizes[n]) >= 7]
    return (wide or names)[-1]


def _loader(args, loaded):
    from xviz.datasets import load_dataset

    dataset, _ = load_dataset(args.data, args.split, transform=loaded.preprocessing.tensor, pm=args.pm)
    return torch.utils.data.DataLoader(dataset, batch_size=args.batch_size), dataset


def dataset_image(dataset, index: int):
    """The PIL image of a dataset item, before its transform."""
    if hasattr(dataset, "image"):
        return dataset.image(index)
    transform = getattr(dataset, "transform", None)
    try:
        dataset.transform = lambda image: image
        image = dataset[index][0]
    finally:
        dataset.transform = transform
    if not hasattr(image, "convert"):
        raise XvizError("the dataset does not give PIL images: pass --image")
    return image


def cmd_report(args) -> int:
    from xviz.images import read_image
    from xviz.models import load_model, torch_device

    loaded = load_model(checkpoint=args.checkpoint, pm=args.pm)
    require_gates(loaded.module, "afs-report")
    device = torch_device(args.device)
    model = loaded.module.to(device).eval()
    loader, dataset = _loader(args, loaded)
    stats = channel_stats(model, loader, limit=args.limit, progress=True)
    out = Path(args.out)
    if args.image:
        view = loaded.preprocessing.view(read_image(args.image))
    else:
        view = loaded.preprocessing.view(dataset_image(dataset, 0))
    x = loaded.preprocessing.normalize(view)[None]
    shown = np.asarray(view.convert("RGB"))
    size = int(x.shape[-1])
    layer = args.layer or default_layer(model, size)
    if layer not in gates(model):
        raise XvizError(f"`{layer}` is not a gated layer: choose one of {', '.join(gates(model))}")
    with torch.no_grad(), recording(model) as records:
        model(x.to(device))
    ratios = {n: g.ratio for n, g in gates(model).items()}
    kept = {n: float(st["kept"].mean()) for n, st in stats.items()}
    macs = estimate_macs(model, size, kept)
    images = stats[next(iter(stats))]["images"]
    written = [
        save_png(importance_figure(stats, f"AFS channel importance ({args.data} {args.split}, {images} images)"),
                 out / "channel_importance.png"),
        save_png(kept_figure(stats, ratios, f"channels computed per layer ({images} images; "
                                            f"{macs.reduction:.2f}x fewer MACs)"), out / "kept_fraction.png"),
        save_png(top_channels_figure(shown, records, layer, args.top), out / "top_channels.png"),
        write_channels_csv(stats, out / "channels.csv"),
    ]
    table = macs_table(macs)
    written.append(atomic_write(out / "macs.txt", lambda tmp: Path(tmp).write_text(table + "\n")))
    print(table)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _prune(model, size: int) -> dict:
    """Prune ``model`` to the channels its masks keep, say what that saves at ``size`` px; returns the kept channels."""
    from xviz_afs.pruning import prune, pruned_channels

    before = estimate_macs(model, size).dense
    prune(model)
    after = estimate_macs(model, size).gated
    print(f"pruned: the masked channels are removed; {after / before:.2f}x the MACs of the unpruned network "
          f"({after / 1e9:.2f} of {before / 1e9:.2f} GMACs at {size} px)")
    return pruned_channels(model)


def cmd_update(args) -> int:
    from xviz.checkpoint import read_checkpoint, save_checkpoint
    from xviz.models import load_model, torch_device

    loaded = load_model(checkpoint=args.checkpoint, pm=args.pm)
    require_gates(loaded.module, "afs-update")
    device = torch_device(args.device)
    model = loaded.module.to(device)
    loader, _ = _loader(args, loaded)
    report = update_masks(model, loader, args.thres_s, args.thres_m, limit=args.limit, progress=True)
    for name, r in report.items():
        print(f"{name:<18} kept {r['kept']:>4}/{r['channels']:<4} static {r['static']:>4}"
              + ("  (skipped: all channels masked)" if r["kept"] == 0 else ""))
    data = read_checkpoint(args.checkpoint)
    target = Path(args.out) if args.out else (Path(args.checkpoint) if Path(args.checkpoint).is_dir()
                                              else Path(args.checkpoint).parent) / ("pruned.pt" if args.prune else "masked.pt")
    extra = {k: v for k, v in data.items() if k not in ("format", "state_dict", "preprocessing")}
    extra["preprocessing"] = loaded.preprocessing
    extra["afs_update"] = {"thres_s": args.thres_s, "thres_m": args.thres_m, "data": args.data, "split": args.split,
                           "pruned": bool(args.prune)}
    if args.prune:
        extra["arch_options"] = dict(extra.get("arch_options") or {}, channels=_prune(model, loaded.preprocessing.crop or 224))
    save_checkpoint(target, state_dict=model.state_dict(), **extra)
    print(f"wrote {target}")
    return 0

