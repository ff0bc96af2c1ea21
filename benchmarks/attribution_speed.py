"""Captum-backed attributions: xviz vs calling captum directly, and the peak memory of integrated gradients.

    .venv/bin/python benchmarks/attribution_speed.py > benchmarks/attribution_speed_cpu.txt

1. Time per image (median of 3 runs) of each xviz method (``explain_tensors``: its shared forward pass
   that picks the targets, then captum, or for saliency, guided backprop and guided GradCAM the gradients
   of that same pass) next to the same captum call made directly on the same model, input, targets and
   parameters (targets given, so captum pays no forward for them). Ratio side by side. Last row: gradcam
   and the three input-gradient methods in one xviz call against the four captum calls.
2. Peak resident memory (VmHWM reset before the call, else ``ru_maxrss``) of integrated gradients (50 steps, internal batch 32) at batch
   1, 16 and 64, each measured in a fresh subprocess: xviz, and captum's own ``internal_batch_size=32``
   (which never splits the examples, so at batch 64 it sends 64 x 1 step at a time).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys

import torch

from timing import median_time

sys.path.insert(0, ".")


def load(which: str, size: int):
    if which == "xviz-demo":
        import xviz

        return xviz.load_model("xviz-demo").module.eval()
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).eval()


def captum_direct(name: str, model, x, t, layer: str):
    """The same computation as xviz's method, written against captum's public API."""
    from captum import attr

    from xviz.capture import find_layer

    if name == "integrated-gradients":
        return attr.IntegratedGradients(model).attribute(x, baselines=0.0, target=t, n_steps=50,
                                                         internal_batch_size=32).sum(1)
    if name == "saliency":
        return attr.Saliency(model).attribute(x, target=t, abs=True).amax(1)
    if name == "guided-backprop":
        return attr.GuidedBackprop(model).attribute(x, target=t).sum(1)
    if name == "guided-gradcam":
        return attr.GuidedGradCam(model, find_layer(model, layer)).attribute(x, target=t,
                                                                            interpolate_mode="bilinear").sum(1)
    if name == "gradcam":
        return attr.LayerGradCam(model, find_layer(model, layer)).attribute(x, target=t, relu_attributions=True)
    if name == "occlusion":
        h = x.shape[-1]
        window = max(2, round(h / 8))
        return attr.Occlusion(model).attribute(x, sliding_window_shapes=(3, window, window),
                                               strides=(3, window // 2, window // 2), baselines=0.0, target=t,
                                               perturbations_per_eval=max(1, 64 // len(x))).mean(1)
    if name == "smoothgrad":
        sigma = 0.15 * float(x.max() - x.min())
        return attr.NoiseTunnel(attr.Saliency(model)).attribute(
            x, nt_type="smoothgrad", nt_samples=32, stdevs=sigma, nt_samples_batch_size=max(1, 32 // len(x)),
            target=t, abs=True).amax(1)
    if name == "integrated-gradients-smooth":
        sigma = 0.15 * float(x.max() - x.min())
        return attr.NoiseTunnel(attr.IntegratedGradients(model)).attribute(
            x, nt_type="smoothgrad", nt_samples=10, stdevs=sigma, nt_samples_batch_size=max(1, 32 // len(x)),
            target=t, n_steps=20, baselines=0.0, internal_batch_size=32).sum(1)
    raise KeyError(name)


def speed(which: str, size: int, n: int, names: list[str], layer: str) -> list[str]:
    import warnings

    from xviz.explainer import explain_tensors

    warnings.filterwarnings("ignore")
    model = load(which, size)
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        t = model(x).argmax(1)
    lines = [f"{which} {size}x{size}, batch {n}: ms per image (median of 3)",
             f"{'method':30s} {'xviz':>9s} {'captum':>9s} {'ratio':>6s}"]
    for name in names:
        xviz_s = median_time(lambda: explain_tensors(model, x, [name], layer=layer))
        captum_s = median_time(lambda: captum_direct(name, model, x.clone(), t, layer))
        lines.append(f"{name:30s} {1000 * xviz_s / n:9.1f} {1000 * captum_s / n:9.1f} {xviz_s / captum_s:6.2f}")
        print(lines[-1], file=sys.stderr, flush=True)
    together = ["gradcam", "saliency", "guided-backprop", "guided-gradcam"]
    if set(together[1:]) <= set(names):  # one explain call (one forward) against captum's calls one by one
        xviz_s = median_time(lambda: explain_tensors(model, x, together, layer=layer))
        captum_s = median_time(lambda: [captum_direct(name, model, x.clone(), t, layer) for name in together])
        label = "+".join(together).replace("guided-", "g")
        lines.append(f"{label:30s} {1000 * xviz_s / n:9.1f} {1000 * captum_s / n:9.1f} {xviz_s / captum_s:6.2f}")
    return lines


def peak_mib(reset: bool = False) -> float:
    """Peak RSS in MiB: VmHWM, reset first (``/proc/self/clear_refs`` 5) where Linux allows, so that the
    import of torch does not hide the call's peak; else ``ru_maxrss``."""
    try:
        if reset:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_child(impl: str, n: int) -> None:
    """Run in a fresh process: print the peak RSS (MiB) before and after one IG call at batch n."""
    import warnings

    from xviz.explainer import explain_tensors

    warnings.filterwarnings("ignore")
    model = load("xviz-demo", 64)
    x = torch.randn(n, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        t = model(x).argmax(1)
    before = peak_mib(reset=True)
    if impl == "xviz":
        explain_tensors(model, x, ["integrated-gradients"])
    else:
        from captum.attr import IntegratedGradients

        IntegratedGradients(model).attribute(x, baselines=0.0, target=t, n_steps=50, internal_batch_size=32)
    after = peak_mib()
    print(json.dumps({"before": before, "peak": after}))


def rss() -> list[str]:
    lines = ["integrated gradients on xviz-demo 64x64 (50 steps, internal batch 32): peak RSS in MiB, "
             "fresh process each (growth over the process's peak before the call)",
             f"{'batch':>5s} {'xviz':>16s} {'captum ibs=32':>16s}"]
    for n in (1, 16, 64):
        cells = []
        for impl in ("xviz", "captum"):
            out = subprocess.run([sys.executable, __file__, "--rss-child", impl, str(n)], capture_output=True,
                                 text=True, check=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            cells.append(f"{r['peak']:7.0f} (+{r['peak'] - r['before']:4.0f})")
        lines.append(f"{n:5d} {cells[0]:>16s} {cells[1]:>16s}")
        print(lines[-1], file=sys.stderr, flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rss-child", nargs=2, metavar=("IMPL", "N"))
    parser.add_argument("--skip-resnet", action="store_true")
    parser.add_argument("--methods", help="only these methods (comma-separated), and no memory section")
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child[0], int(args.rss_child[1]))
        return
    torch.manual_seed(0)
    all_names = ["integrated-gradients", "saliency", "guided-backprop", "guided-gradcam", "occlusion", "smoothgrad",
                 "integrated-gradients-smooth"]
    import captum

    lines = [f"torch {torch.__version__}, captum {captum.__version__}, {torch.get_num_threads()} threads, "
             f"{platform.processor() or platform.machine()}", ""]
    names = args.methods.split(",") if args.methods else all_names
    lines += speed("xviz-demo", 64, 4, names, "features") + [""]
    if not args.skip_resnet:
        lines += speed("resnet18", 112, 2, [n for n in ["integrated-gradients", "saliency", "guided-backprop",
                                                        "guided-gradcam"] if n in names], "layer4") + [""]
    if not args.methods:
        lines += rss()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
