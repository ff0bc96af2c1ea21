"""CAM speed, side by side in one run: xviz against the floor and against peer libraries.

The floor is what any GradCAM must do: one forward pass with the target activation recorded, and
``torch.autograd.grad`` of the target scores to that activation. "floor, parameters frozen" is the
same with the parameters' graph not recorded, as xviz does: the fairest baseline for xviz. Every row prints ms per image and
its ratio to the floor of the same model and batch. Peers without multi-target support pay one
full pass per method or target (that is how a user gets GradCAM + GradCAM++, or the top 5).

    python benchmarks/cam_speed.py                       # resnet18, resnet50, vgg16 at batch 1 and 16
    python benchmarks/cam_speed.py --models resnet18 --batches 16 --repeats 5
    python benchmarks/cam_speed.py --family            # XGradCAM, HiResCAM, LayerCAM, EigenCAM (+ vit_b_16)
    python benchmarks/cam_speed.py --scorecam          # ScoreCAM time, and peak RSS at batch 1, 16, 64
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import warnings

import torch
import torchvision

from xviz.explainer import explain_tensors
from xviz.registry import get_plugin_manager

LAYERS = {"resnet18": "layer4", "resnet50": "layer4", "vgg16": "features.29",
          "vit_b_16": "encoder.layers.encoder_layer_11.ln_1"}
FAMILY = ["xgradcam", "hirescam", "layercam", "eigencam"]


def vit_tokens(tensor, side=14):
    """pytorch-grad-cam's reshape_transform for ViT tokens (N, 1 + 14*14, C) -> (N, C, 14, 14)."""
    return tensor[:, 1:, :].reshape(tensor.size(0), side, side, tensor.size(2)).permute(0, 3, 1, 2)
warnings.filterwarnings("ignore")


def floor(model, layer, x, targets):
    store = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        logits = model(x)
        torch.autograd.grad(logits.gather(1, targets[:, :1]).sum(), store["a"])
    finally:
        handle.remove()


def frozen_floor(model, layer, x, targets):
    """The floor with parameters frozen, as xviz explains: no graph is recorded for them."""
    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        store = {}

        def keep(module, inputs, output):
            leaf = output.detach().requires_grad_(True)
            store["a"] = leaf
            return leaf.clone()

        handle = dict(model.named_modules())[layer].register_forward_hook(keep)
        try:
            logits = model(x)
            torch.autograd.grad(logits.gather(1, targets[:, :1]).sum(), store["a"])
        finally:
            handle.remove()
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)


def candidates(model, layer, x, targets, pm):
    module = dict(model.named_modules())[layer]
    t1 = targets[:, 0].tolist()
    runs = {
        "floor": lambda: floor(model, layer, x, targets),
        "floor, parameters frozen": lambda: frozen_floor(model, layer, x, targets),
        "xviz gradcam": lambda: explain_tensors(model, x, ["gradcam"], layer=layer, pm=pm),
        "xviz gradcampp": lambda: explain_tensors(model, x, ["gradcampp"], layer=layer, pm=pm),
        "xviz gradcam+gradcampp": lambda: explain_tensors(model, x, ["gradcam", "gradcampp"], layer=layer, pm=pm),
        "xviz gradcam top-5": lambda: explain_tensors(model, x, ["gradcam"], layer=layer, topk=5, pm=pm),
    }
    try:
        from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        def pgc(cls, target_lists):
            with cls(model=model, target_layers=[module]) as cam:
                for tl in target_lists:
                    cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in tl])

        top5 = [targets[:, k].tolist() for k in range(5)]
        runs["pytorch-grad-cam gradcam"] = lambda: pgc(GradCAM, [t1])
        runs["pytorch-grad-cam gradcampp"] = lambda: pgc(GradCAMPlusPlus, [t1])
        runs["pytorch-grad-cam gradcam+gradcampp"] = lambda: (pgc(GradCAM, [t1]), pgc(GradCAMPlusPlus, [t1]))
        runs["pytorch-grad-cam gradcam top-5"] = lambda: pgc(GradCAM, top5)
    except ImportError:
        pass
    try:
        from captum.attr import LayerGradCam

        target_tensor = targets[:, 0]
        runs["captum gradcam"] = lambda: LayerGradCam(model, module).attribute(x, target=target_tensor,
                                                                               relu_attributions=True)
    except ImportError:
        pass
    try:
        from torchcam.methods import GradCAM as TCGradCAM, GradCAMpp as TCGradCAMpp

        def tc(cls):
            with cls(model, target_layer=layer) as extractor:
                extractor(t1, model(x))

        runs["torchcam gradcam"] = lambda: tc(TCGradCAM)
        runs["torchcam gradcampp"] = lambda: tc(TCGradCAMpp)
    except ImportError:
        pass
    return runs


def family_candidates(model, layer, x, targets, pm):
    """The floor, xviz's XGradCAM / HiResCAM / LayerCAM / EigenCAM alone and all four (+ GradCAM) in one
    pass, and the peers' versions (one pass each)."""
    module = dict(model.named_modules())[layer]
    t1 = targets[:, 0].tolist()
    runs = {"floor": lambda: floor(model, layer, x, targets)}
    for name in FAMILY:
        runs[f"xviz {name}"] = lambda name=name: explain_tensors(model, x, [name], layer=layer, pm=pm)
    runs["xviz gradcam+4 above"] = lambda: explain_tensors(model, x, ["gradcam", *FAMILY], layer=layer, pm=pm)
    try:
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        reshape = vit_tokens if layer.endswith("ln_1") else None
        classes = {"xgradcam": pgc.XGradCAM, "hirescam": pgc.HiResCAM, "layercam": pgc.LayerCAM,
                   "eigencam": pgc.EigenCAM}

        def one(cls):
            with cls(model=model, target_layers=[module], reshape_transform=reshape) as cam:
                cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in t1])

        for name, cls in classes.items():
            runs[f"pytorch-grad-cam {name}"] = lambda cls=cls: one(cls)
        runs["pytorch-grad-cam gradcam+4 above"] = lambda: [one(c) for c in (pgc.GradCAM, *classes.values())]
    except ImportError:
        pass
    if not layer.endswith("ln_1"):
        try:
            from torchcam.methods import LayerCAM as TCLayerCAM, XGradCAM as TCXGradCAM

            def tc(cls):
                with cls(model, target_layer=layer) as extractor:
                    extractor(t1, model(x))

            runs["torchcam xgradcam"] = lambda: tc(TCXGradCAM)
            runs["torchcam layercam"] = lambda: tc(TCLayerCAM)
        except ImportError:
            pass
    return runs


def scorecam_model():
    """ScoreCAM's model: the bundled demo CNN at 64 px, layer `features` (64 channels of 16x16)."""
    from xviz.models import load_model

    return load_model("xviz-demo", pm=get_plugin_manager(entrypoints=False)).module, "features", 64


def scorecam_run(lib, model, layer, x, target):
    if lib == "xviz":
        return explain_tensors(model, x, ["scorecam"], layer=layer, pm=get_plugin_manager(entrypoints=False))
    if lib == "pytorch-grad-cam":
        from pytorch_grad_cam import ScoreCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        with ScoreCAM(model=model, target_layers=[dict(model.named_modules())[layer]]) as cam:
            cam.batch_size = 32
            return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in target])
    from torchcam.methods import ScoreCAM as TCScoreCAM

    with TCScoreCAM(model, target_layer=layer, batch_size=32, input_shape=tuple(x.shape[1:])) as extractor:
        model(x)
        return extractor(target.tolist())


def rss_child(lib, batch):
    """In a fresh process: peak RSS (MiB) of one ScoreCAM batch, and the same before explaining."""
    import io
    import contextlib

    model, layer, size = scorecam_model()
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        target = model(x).argmax(1)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # pytorch-grad-cam's tqdm bars
        scorecam_run(lib, model, layer, x, target)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"before": before, "peak": peak, "seconds": seconds}))


def scorecam_table(batches=(1, 16, 64), libs=("xviz", "pytorch-grad-cam", "torchcam"), full=False):
    model, layer, size = scorecam_model()
    print(f"ScoreCAM: xviz-demo `{layer}` at {size}x{size}, 64 masked forwards per image, chunks of 32; "
          "each cell a fresh process; growth = peak RSS - RSS before explaining")
    print(f"{'library':<18} {'batch':>5} {'s/img':>7} {'peak RSS MiB':>13} {'growth MiB':>11}")
    for lib in libs:
        for batch in batches:
            if lib != "xviz" and batch > 16 and not full:
                print(f"{lib:<18} {batch:>5}  (not run; --scorecam-full runs it)")
                continue
            out = subprocess.run([sys.executable, __file__, "--rss-child", lib, str(batch)], capture_output=True,
                                 text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{lib:<18} {batch:>5} {r['seconds'] / batch:>7.2f} {r['peak']:>13.0f} "
                  f"{r['peak'] - r['before']:>11.0f}", flush=True)


def measure(runs, repeats):
    times = {name: [] for name in runs}
    for name, fn in runs.items():  # warm-up
        fn()
    for _ in range(repeats):  # interleaved, so drift hits every candidate alike
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(LAYERS))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--family", action="store_true", help="XGradCAM, HiResCAM, LayerCAM, EigenCAM vs peers")
    parser.add_argument("--scorecam", action="store_true", help="ScoreCAM time and peak RSS at batch 1, 16, 64")
    parser.add_argument("--scorecam-full", action="store_true", help="--scorecam with the peers at batch 64 too")
    parser.add_argument("--rss-child", nargs=2, metavar=("LIB", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        return rss_child(args.rss_child[0], int(args.rss_child[1]))
    if args.scorecam or args.scorecam_full:
        return scorecam_table(full=args.scorecam_full)
    pm = get_plugin_manager()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, 224x224, "
          f"median of {args.repeats}")
    print(f"{'model':<9} {'batch':>5}  {'method':<36} {'ms/img':>9} {'x floor':>8}")
    for name in args.models:
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None).eval().to(args.device)
        for batch in args.batches:
            x = torch.randn(batch, 3, 224, 224, device=args.device)
            with torch.no_grad():
                targets = model(x).topk(5, dim=1).indices
            make = family_candidates if args.family else candidates
            results = measure(make(model, LAYERS[name], x, targets, pm), args.repeats)
            base = results["floor"]
            for method, seconds in results.items():
                print(f"{name:<9} {batch:>5}  {method:<36} {1000 * seconds / batch:>9.1f} {seconds / base:>8.2f}")
            print(flush=True)


if __name__ == "__main__":
    main()
