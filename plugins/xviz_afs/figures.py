"""The AFDS document's figures: ``xviz afs-diagram`` (one AFS gate, drawn from the modules of a
gated network, so the picture follows the code), ``xviz afs-compare`` (test accuracy and MACs of
runs trained with different regularisers, before and after ``afs-update``; a checkpoint that
``afs-update`` wrote is measured with its own masks) and ``xviz afs-sweep``
(accuracy against MACs as the keep ratio d and the mask threshold vary, on one trained network).

MACs are :func:`xviz_afs.sparse.estimate_macs` for one image at the checkpoint's input size:
dropped output channels (and the matching inputs of the next conv in the block) are not computed;
the gate predictors are counted.
"""

from __future__ import annotations

import copy
import csv
import io
from pathlib import Path

import torch

from xviz.errors import XvizError
from xviz.render import atomic_write, save_png

from xviz_afs.gates import gates, recording, require_gates, update_masks
from xviz_afs.sparse import estimate_macs

# ---------------------------------------------------------------- the gate diagram


def gate_parts(model, layer: str | None = None) -> dict:
    """What the diagram shows, read from the model: the gated ``conv``, its ``bn``, the gate's
    ``predictor``, keep ratio d and the number of channels it keeps, and the s / m masks."""
    from xviz_afs.gates import conv_bn_pairs

    found = require_gates(model, "afs-diagram")
    layer = layer or next(iter(found))
    if layer not in found:
        raise XvizError(f"`{layer}` is not a gated layer: choose one of {', '.join(found)}")
    gate = found[layer]
    conv, bn_name, bn = next((c, bn_name, b) for name, c, bn_name, b in conv_bn_pairs(model) if name == layer)
    k = max(1, round(gate.ratio * conv.out_channels))
    return {"layer": layer, "bn_name": bn_name, "conv": conv, "bn": bn, "gate": gate, "k": k,
            "dynamic": int(gate.s.sum()), "kept": int(gate.m.sum()), "channels": conv.out_channels}


def _box(ax, xy, text, colour):
    ax.text(*xy, text, ha="center", va="center", fontsize=9.5, wrap=True,
            bbox={"boxstyle": "round,pad=0.45", "fc": colour, "ec": "#444444", "lw": 1})


def _arrow(ax, start, end, label=""):
    ax.annotate("", xy=end, xytext=start, arrowprops={"arrowstyle": "-|>", "color": "#333333", "lw": 1.2})
    if label:
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.12, label, ha="center", fontsize=8.5,
                color="#333333")


def gate_figure(parts: dict, title: str = ""):
    """The AFS gate of one Conv+BN pair: the data path (conv -> BN -> scale -> ReLU) below, the gate
    (GAP -> predictor -> winner-take-all -> s / m masks) above; every label is read from the modules."""
    import matplotlib.pyplot as plt

    conv, bn, gate, c = parts["conv"], parts["bn"], parts["gate"], parts["channels"]
    kh, kw = conv.kernel_size
    fig, ax = plt.subplots(figsize=(7.2, 3.9))
    ax.set_xlim(-0.3, 8.7)
    ax.set_ylim(-0.5, 3.3)
    ax.axis("off")
    low, high = 0.3, 2.3
    _box(ax, (0.2, low), f"x\n{conv.in_channels} ch", "#ffffff")
    _box(ax, (1.9, low), f"{parts['layer']}\nConv2d {conv.in_channels}→{c}\n{kh}x{kw}, stride {conv.stride[0]}",
         "#dbe9f6")
    _box(ax, (3.9, low), f"{parts['bn_name']}\nBatchNorm2d({bn.num_features})", "#dbe9f6")
    _box(ax, (6.15, low), "× scale\n(per channel)", "#fde2c8")
    _box(ax, (8.0, low), "ReLU\n(rest of\nthe block)", "#ffffff")
    for a, b in ((0.55, 1.05), (2.75, 3.0), (4.8, 5.5), (6.8, 7.45)):
        _arrow(ax, (a, low), (b, low))
    _box(ax, (0.2, high), "GAP(x)\n" + f"{conv.in_channels}", "#e8f4e0")
    _box(ax, (1.9, high), f"predictor\nLinear {gate.predictor.in_features}→{gate.predictor.out_features}\n"
                          "+ ReLU: h", "#e8f4e0")
    _box(ax, (3.9, high), f"winner-take-all\nkeeps the {parts['k']} largest\nof {c} (d = {gate.ratio:g})", "#e8f4e0")
    _box(ax, (6.15, high), f"s: {parts['dynamic']}/{c} dynamic\nm: {parts['kept']}/{c} kept\nγ: {c} (static ch.)",
         "#fff4c2")
    _arrow(ax, (0.2, low + 0.45), (0.2, high - 0.4))
    for a, b in ((0.55, 1.05), (2.75, 3.0), (4.85, 5.3)):
        _arrow(ax, (a, high), (b, high))
    _arrow(ax, (6.15, high - 0.45), (6.15, low + 0.42))
    ax.text(4.2, -0.35, "scale = m · (s · h · keep + (1 − s) · γ · keep)    out = ReLU(scale · BN(conv x))",
            ha="center", fontsize=9.5, family="DejaVu Sans")
    ax.set_title(title or f"One AFS gate ({parts['layer']})", fontsize=11)
    fig.tight_layout()
    return fig


def cmd_diagram(args) -> int:
    from xviz.models import load_model

    if args.checkpoint:
        loaded = load_model(checkpoint=args.checkpoint, pm=args.pm)
    else:
        loaded = load_model(args.model, weights="none", pm=args.pm)
        if args.ratio is not None:
            _set_ratio(loaded.module, args.ratio)
    parts = gate_parts(loaded.module, args.layer)
    path = save_png(gate_figure(parts, f"One AFS gate of {loaded.name} ({parts['layer']})"), args.out)
    print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------- accuracy and MACs


def _test_loader(loaded, data: dict, split: str, limit: int | None, batch_size: int, pm):
    from xviz.datasets import load_dataset

    dataset, _ = load_dataset(data["dataset"], split, root=data.get("data"), pm=pm,
                              transform=loaded.preprocessing.tensor, **(data.get("dataset_options") or {}))
    if limit is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size)


def unmasked_macs(model, image_size: int) -> tuple[float, float]:
    """(gated MACs, dense MACs) of a gated model whose masks are all 1: winner-take-all then keeps
    exactly round(d * C) of each layer's C channels on every image, so no data is needed."""
    found = gates(model)
    if any(bool((g.m == 0).any()) for g in found.values()):
        raise XvizError("the gates are masked already (afs-update ran): measure on data instead")
    kept = {n: max(1, round(g.ratio * len(g.m))) / len(g.m) for n, g in found.items()}
    macs = estimate_macs(model, image_size, kept)
    return macs.gated, macs.dense


@torch.no_grad()
def accuracy_and_macs(model, loader, image_size: int) -> tuple[float, float, float]:
    """(test accuracy, gated MACs, dense MACs) of a gated model; the kept fraction of each layer is
    measured on the same images (winner-take-all and the m mask)."""
    model.eval()
    found = gates(model)
    correct = count = 0
    kept = {name: 0.0 for name in found}
    for x, y in loader:
        with recording(model, outputs=False) as records:
            logits = model(x)
        correct += int((logits.argmax(1) == y).sum())
        count += len(y)
        for name, r in records.items():
            kept[name] += float((r["keep"] * found[name].m).mean(1).sum())
    if not count:
        raise XvizError("the accuracy pass saw no images")
    macs = estimate_macs(model, image_size, {n: v / count for n, v in kept.items()})
    return correct / count, macs.gated, macs.dense


def _run_data(data, args) -> dict:
    """The dataset a checkpoint was trained on (its config), unless ``--data`` names another."""
    config = data.get("config") or {}
    if args.data:
        return {"dataset": args.data, "data": args.data_root}
    if not config.get("dataset"):
        raise XvizError("the checkpoint does not say which dataset it was trained on: pass --data NAME")
    return {k: config.get(k) for k in ("dataset", "data", "dataset_options")}


def _load_run(run: str, args, test_limit: int | None = None):
    from xviz.checkpoint import read_checkpoint
    from xviz.models import load_model

    loaded = load_model(checkpoint=run, pm=args.pm)
    require_gates(loaded.module, "afs-compare")
    stored = read_checkpoint(run)
    size = loaded.preprocessing.crop or loaded.preprocessing.resize
    data = _run_data(stored, args)
    test = _test_loader(loaded, data, "test", test_limit, args.batch_size, args.pm)
    train = _test_loader(loaded, data, "train", args.limit, args.batch_size, args.pm)
    return loaded, stored, size, test, train


def _write_csv(rows: list[list], header: list[str], path: Path) -> Path:
    def write(tmp):
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows([header, *rows])
        Path(tmp).write_text(buffer.getvalue())
    return atomic_write(path, write)


def table_figure(header: list[str], rows: list[list[str]], title: str):
    """A table as a picture (matplotlib), readable at ~700 px."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 0.8 + 0.4 * (len(rows) + 2)))
    ax.axis("off")
    table = ax.table(cellText=rows, colLabels=header, loc="center", cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(9.5)
    table.auto_set_column_width(list(range(len(header))))
    table.scale(1, 1.6)
    for (r, _), cell in table.get_celld().items():
        if r == 0:
            cell.set_height(cell.get_height() * 1.7)  # two-line headers
    for (r, _), cell in table.get_celld().items():
        if r == 0:
            cell.set_facecolor("#dbe9f6")
            cell.set_text_props(weight="bold")
    ax.set_title(title, fontsize=11)
    fig.tight_layout()
    return fig


def cmd_compare(args) -> int:
    from tqdm import tqdm

    header = ["run", "regulariser", "test acc.\n(the run)", "MMACs\n(d)", "acc. after\nafs-update", "MMACs after\nafs-update",
              "MACs\nsaved"]
    rows, numbers = [], []
    for run in tqdm(args.runs, desc="afs-compare", unit="run"):
        loaded, stored, size, test, train = _load_run(run, args)
        config = stored.get("config") or {}
        history = stored.get("history") or []
        model = loaded.module.eval()
        masks = {name: g.m.clone() for name, g in gates(model).items()}
        for gate in gates(model).values():  # the network as trained: every channel allowed
            gate.m.fill_(1)
        gated, dense = unmasked_macs(model, size)
        if all(bool((m == 1).all()) for m in masks.values()):
            update_masks(model, train, args.thres_s, args.thres_m)
        else:  # afs-update has run: measure the checkpoint's own masks
            for name, gate in gates(model).items():
                gate.m.copy_(masks[name])
        masked_acc, masked, _ = accuracy_and_macs(model, test, size)
        reg = config.get("reg", "?")
        reg = reg if reg == "none" else f"{reg}, λ {config.get('reg_lambda', '?')}"
        final = history[-1]["test_acc"] if history else float("nan")
        name = Path(run).name if Path(run).is_dir() else f"{Path(run).parent.name}/{Path(run).name}"
        rows.append([name, reg, f"{100 * final:.1f} %", f"{gated / 1e6:.1f}", f"{100 * masked_acc:.1f} %",
                     f"{masked / 1e6:.1f}", f"{dense / masked:.2f}x"])
        numbers.append([name, config.get("reg", ""), f"{100 * final:.4f}", f"{gated / 1e6:.4f}",
                        f"{100 * masked_acc:.4f}", f"{masked / 1e6:.4f}", f"{dense / 1e6:.4f}", f"{dense / masked:.4f}"])
    out = Path(args.out)
    written = [_write_csv(numbers, ["run", "reg", "test_acc", "mmacs", "masked_test_acc", "masked_mmacs", "dense_mmacs",
                                    "reduction"], out / "afs_compare.csv"),
               save_png(table_figure(header, rows, f"test accuracy and MACs per image ({dense / 1e6:.1f} MMACs dense)"),
                        out / "afs_compare.png")]
    for row in rows:
        print("  ".join(row))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _set_ratio(model, ratio: float) -> None:
    from xviz_afs.gates import check_ratio

    for gate in gates(model).values():
        gate.ratio = check_ratio(ratio)


def sweep_figure(points: dict[str, list[tuple[str, float, float]]], dense: float, title: str):
    """Accuracy (%) against MMACs, one line per swept setting, each point labelled with its value."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (series, values), marker in zip(points.items(), "os^D"):
        xs, ys = [m / 1e6 for _, m, _ in values], [100 * a for _, _, a in values]
        ax.plot(xs, ys, marker=marker, label=series)
        for (label, m, a) in values:
            ax.annotate(label, (m / 1e6, 100 * a), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.axvline(dense / 1e6, color="grey", ls=":", lw=1)
    ax.text(dense / 1e6, ax.get_ylim()[0], " dense", color="grey", fontsize=8, va="bottom")
    ax.set_xlabel("MACs per image (millions)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="best")
    ax.set_title(title, fontsize=11)
    fig.tight_layout()
    return fig


def _floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise XvizError(f"`{flag} {text}` is not a comma-separated list of numbers, e.g. {flag} 0.25,0.5")
    return values


def cmd_sweep(args) -> int:
    from tqdm import tqdm

    ratios, thresholds = _floats(args.ratios, "--ratios"), _floats(args.thres_m, "--thres-m")
    loaded, stored, size, test, train = _load_run(args.checkpoint, args, args.limit)
    model = loaded.module.eval()
    trained = next(iter(gates(model).values())).ratio
    points: dict[str, list[tuple[str, float, float]]] = {"keep ratio d (masks all 1)": [],
                                                          f"threshold m (d = {trained:g}, after afs-update)": []}
    rows, dense = [], 0.0
    for ratio in tqdm(ratios, desc="afs-sweep: d", unit="ratio"):
        _set_ratio(model, ratio)
        acc, macs, dense = accuracy_and_macs(model, test, size)
        points["keep ratio d (masks all 1)"].append((f"d={ratio:g}", macs, acc))
        rows.append(["ratio", f"{ratio:g}", f"{args.thres_s:g}", f"{acc:.4f}", f"{macs:.0f}"])
    _set_ratio(model, trained)
    for thres in tqdm(thresholds, desc="afs-sweep: thresholds", unit="threshold"):
        masked = copy.deepcopy(model)
        update_masks(masked, train, args.thres_s, thres)
        acc, macs, _ = accuracy_and_macs(masked, test, size)
        points[f"threshold m (d = {trained:g}, after afs-update)"].append((f"t={thres:g}", macs, acc))
        rows.append(["thres_m", f"{thres:g}", f"{args.thres_s:g}", f"{acc:.4f}", f"{macs:.0f}"])
    out = Path(args.out)
    title = f"{Path(args.checkpoint).name}: accuracy against MACs ({len(test.dataset)} test images)"
    written = [_write_csv(rows, ["swept", "value", "thres_s", "test_acc", "macs"], out / "sweep.csv"),
               save_png(sweep_figure(points, dense, title), out / "accuracy_macs.png")]
    for row in rows:
        print("  ".join(row))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
