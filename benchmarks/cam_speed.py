"""CAM speed, side by side in one run: xviz against the floor and against peer libraries.

The floor is what any GradCAM must do: one forward pass with the target activation recorded, and
``torch.autograd.grad`` of the target scores to that activation. "floor, parameters frozen" is the
same with the parameters' graph not recorded, as xviz does: the fairest baseline for xviz. Every row prints ms per image and
its ratio to the floor of the same model and batch. Peers without multi-target support pay one
full pass per method or target (that is how a user gets GradCAM + GradCAM++, or the top 5).

    python benchmarks/cam_speed.py                       # resnet18, resnet50, vgg16 at batch 1 and 16
    python benchmarks/cam_speed.py --models resnet18 --batches 16 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
import torchvision

from xviz.explainer import explain_tensors
from xviz.registry import get_plugin_manager

LAYERS = {"resnet18": "layer4", "resnet50": "layer4", "vgg16": "features.29"}
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
    args = parser.parse_args()
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
            results = measure(candidates(model, LAYERS[name], x, targets, pm), args.repeats)
            base = results["floor"]
            for method, seconds in results.items():
                print(f"{name:<9} {batch:>5}  {method:<36} {1000 * seconds / batch:>9.1f} {seconds / base:>8.2f}")
            print(flush=True)


if __name__ == "__main__":
    main()
