"""The training subsystem: recipes, freeze schedules, optimisers and schedules, checkpoints, exact resume."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xviz.checkpoint import read_checkpoint
from xviz.errors import XvizError
from xviz.train import TrainConfig, make_config, train
from xviz.train.config import RECIPES, read_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPE_NAMES = sorted(p.stem for p in RECIPES.glob("*.toml"))


def tiny(out, **overrides):
    """A seconds-long run of the demo CNN on 48 synthetic images."""
    values = dict(model="xviz-demo", dataset="synthetic", dataset_options={"size": 48}, epochs=3, batch_size=16,
                  lr=0.05, out=str(out), augment=["flip", "crop"])
    values.update(overrides)
    return TrainConfig(**values).validate()


def weights(path):
    return read_checkpoint(path)["state_dict"]


# --- recipes --------------------------------------------------------------------------------------

def test_bundled_recipes_are_valid():
    assert {"cifar10-resnet18-flip", "cifar10-resnet18-cutout", "cub-frozen", "cub-unfrozen",
            "cub-freeze-then-unfreeze", "finetune-gradual", "xviz-demo"} <= set(RECIPE_NAMES)
    for name in RECIPE_NAMES:
        cfg = make_config(name)
        assert cfg.epochs >= 1 and cfg.model
        assert cfg.sync_bn == (cfg.batch_size <= 48 and cfg.dataset != "synthetic"), name  # small batches per process


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_every_recipe_runs_on_synthetic_data(name, tmp_path):
    recipe = read_recipe(name)
    epochs = 3
    unfreeze = {group: min(first, epochs) for group, first in recipe.get("unfreeze", {}).items()}
    options = recipe.get("model_options", {})
    if "input_size" in options:  # attention networks: small and at the test's input size
        options = dict(options, input_size=32, width=0.25)
    model = "afs_resnet18" if recipe["model"].startswith("afs_resnet") else recipe["model"]  # the recipe's settings, a small depth
    cfg = make_config(name, dataset="synthetic", data=None, dataset_options={"size": 24, "image_size": 32},
                      model=model, model_options=options,
                      image_size=32, weights="none", epochs=epochs, batch_size=12, unfreeze=unfreeze,
                      out=str(tmp_path / name), augment=[a for a in recipe.get("augment", []) if a != "rrc"] or [])
    result = train(cfg, log=lambda *a: None)
    assert len(result.history) == epochs
    data = read_checkpoint(tmp_path / name / "last.pt")
    assert data["arch"] == model and data["class_names"][0] == "horned"
    assert data["arch_options"] == {**options, **({"head": recipe["head"]} if "head" in recipe else {})}


def test_recipe_with_a_typo_names_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('model = "xviz-demo"\nlearning_rate = 0.1\n')
    with pytest.raises(XvizError, match=r"unknown setting `learning_rate`"):
        make_config(str(bad))
    bad.write_text('model = "xviz-demo"\nepoch = 3\n')
    with pytest.raises(XvizError, match=r"unknown setting `epoch` \(did you mean `epochs`\?\)"):
        make_config(str(bad))
    with pytest.raises(XvizError, match="unknown recipe `cifar10-resnet18-flp`: did you mean `cifar10-resnet18-flip`"):
        make_config("cifar10-resnet18-flp")
    with pytest.raises(XvizError, match="unknown scheduler `cosin`"):
        make_config(None, scheduler="cosin")


# --- freeze schedules and discriminative learning rates -------------------------------------------

def _changed(before, after):
    return {k for k in before if before[k].dtype.is_floating_point and not torch.equal(before[k], after[k])}


@pytest.mark.parametrize("train_bn", [False, True])
def test_freeze_then_unfreeze_changes_the_right_parameters(tmp_path, train_bn):
    cfg = tiny(tmp_path / "run", epochs=2, unfreeze={"head": 1, "all": 2}, train_bn=train_bn, augment=[])
    torch.manual_seed(cfg.seed)
    from xviz import registry

    start = registry.models()["xviz-demo"].build(6).state_dict()
    train(cfg, log=lambda *a: None)
    after1 = weights(tmp_path / "run" / "checkpoints" / "epoch-0001.pt")
    after2 = weights(tmp_path / "run" / "checkpoints" / "epoch-0002.pt")
    epoch1 = _changed(start, after1)
    bn = {k for k in start if k.startswith("features.") and (".1." in k or ".4." in k or ".8." in k or ".11." in k
                                                            or ".15." in k or ".18." in k)}
    assert {"classifier.weight", "classifier.bias"} <= epoch1
    conv = {k for k in start if k.endswith(".weight") and start[k].dim() == 4}
    assert not (epoch1 & conv)  # convolutions frozen in epoch 1
    assert bool(epoch1 & bn) == train_bn  # BatchNorm trains (and its statistics move) only with train_bn
    assert conv <= _changed(after1, after2)  # everything trains in epoch 2


def test_discriminative_learning_rates():
    import torchvision

    from xviz.train.schedules import param_groups

    model = torchvision.models.resnet18(weights=None)
    groups = {g["name"]: g for g in param_groups(model, 0.1, {"head": 1, "layer4": 0.1, "layer3": 0.01, "backbone": 0.001}, 0)}
    assert {n: round(g["lr"], 8) for n, g in groups.items()} == {"head": 0.1, "layer4": 0.01, "layer3": 0.001,
                                                                 "backbone": 0.0001}
    assert sum(p.numel() for g in groups.values() for p in g["params"]) == sum(p.numel() for p in model.parameters())
    assert all(p is model.fc.weight or p is model.fc.bias for p in groups["head"]["params"])
    with pytest.raises(XvizError, match="unknown parameter group `layer9`"):
        param_groups(model, 0.1, {"layer9": 0.1}, 0)


# --- optimisers and schedules ---------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:Detected call of")
@pytest.mark.parametrize("name, torch_scheduler", [
    ("step", lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.1)),
    ("multistep", lambda opt: torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[2, 5], gamma=0.5)),
    ("halving", lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)),
])
def test_epoch_schedules_match_torch(name, torch_scheduler):
    from xviz.train.schedules import make_scheduler

    cfg = TrainConfig(scheduler=name, epochs=8, step_size=3, gamma=0.1 if name == "step" else 0.5, milestones=[2, 5],
                      halve_every=2)
    p = torch.nn.Parameter(torch.zeros(1))
    ours_opt, ref_opt = torch.optim.SGD([p], lr=1.0), torch.optim.SGD([p], lr=1.0)
    ours, ref = make_scheduler(ours_opt, cfg, steps_per_epoch=4), torch_scheduler(ref_opt)
    for epoch in range(8):
        for _ in range(4):
            assert ours_opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"])
            ours.step()
        ref.step()


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_onecycle_and_cosine_shapes():
    from xviz.train.schedules import make_scheduler

    for name in ("onecycle", "cosine"):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=0.4)
        sched = make_scheduler(opt, TrainConfig(scheduler=name, epochs=5), steps_per_epoch=10)
        lrs = []
        for _ in range(50):
            lrs.append(opt.param_groups[0]["lr"])
            sched.step()
        if name == "onecycle":
            assert max(lrs) == pytest.approx(0.4, rel=0.05) and lrs[0] < 0.05 and lrs[-1] < 1e-3
        else:
            assert lrs[0] == pytest.approx(0.4) and all(a >= b for a, b in zip(lrs, lrs[1:])) and lrs[-1] < 0.001


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_optimizers(name, cls):
    from xviz.train.schedules import make_optimizer

    model = torch.nn.Linear(3, 2)
    opt = make_optimizer(model, TrainConfig(optimizer=name, lr=0.01, nesterov=True))
    assert isinstance(opt, cls) and opt.param_groups[0]["lr"] == 0.01
    if name == "sgd":
        assert opt.param_groups[0]["nesterov"] and opt.param_groups[0]["momentum"] == 0.9


# --- augmentations --------------------------------------------------------------------------------

def test_augmentations_keep_sizes_and_cutout_zeroes_a_square():
    from PIL import Image

    from xviz.images import Preprocessing
    from xviz.train.augment import Cutout, train_transform

    pre = Preprocessing(None, None, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    img = Image.new("RGB", (32, 24), (255, 255, 255))
    cfg = TrainConfig(cutout=8)
    for names in (["crop"], ["flip", "rotate", "jitter"], ["rrc"], ["crop", "cutout"]):
        assert train_transform(names, pre, cfg)(img).shape == (3, 24, 32)
    torch.manual_seed(0)
    areas = []
    for _ in range(100):
        x = Cutout(8)(torch.ones(3, 40, 40))
        zeros = (x[0] == 0).nonzero()
        rows, cols = zeros[:, 0], zeros[:, 1]
        h, w = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert len(zeros) == h * w and h <= 8 and w <= 8  # one rectangle, clipped at the borders
        assert (x[:, rows, cols] == 0).all()  # all channels
        areas.append(len(zeros))
    assert max(areas) == 64 and min(areas) < 64
    with pytest.raises(XvizError, match="unknown augmentation `mixup`"):
        train_transform(["mixup"], pre, cfg)


# --- checkpoints and resume -----------------------------------------------------------------------

def test_run_folder_history_and_keep(tmp_path):
    train(tiny(tmp_path / "run", keep=2), log=lambda *a: None)
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch-0002.pt", "epoch-0003.pt"]
    data = read_checkpoint(run / "last.pt")
    assert len(data["history"]) == 3 and data["config"]["epochs"] == 3 and "training" not in data
    best = read_checkpoint(run / "best.pt")
    assert best["epoch"] == max(data["history"], key=lambda h: h["test_acc"])["epoch"]
    full = torch.load(run / "checkpoints" / "epoch-0003.pt", weights_only=True)  # safe loading of the full state
    assert set(full["training"]) == {"epoch", "optimizer", "scheduler", "scaler", "rng"}
    assert (run / "history.json").is_file() and (run / "history.csv").is_file()


def test_finished_run_says_so(tmp_path, capsys):
    from xviz.cli import main

    train(tiny(tmp_path / "run", epochs=1), log=lambda *a: None)
    before = (tmp_path / "run" / "last.pt").stat().st_mtime_ns
    assert main(["train", "--resume", str(tmp_path / "run")]) == 0
    assert "already finished: 1/1 epochs" in capsys.readouterr().out
    assert (tmp_path / "run" / "last.pt").stat().st_mtime_ns == before


def test_bad_training_input_is_one_line(tmp_path, capsys):
    from xviz.cli import main

    train(tiny(tmp_path / "run", epochs=1), log=lambda *a: None)
    capsys.readouterr()
    cases = [
        (["train", "--model", "xviz-demo", "--dataset", "imagenet-22k", "--out", str(tmp_path / "a")], "unknown dataset `imagenet-22k`"),
        (["train", "--model", "resnet5", "--out", str(tmp_path / "b")], "unknown model `resnet5`"),
        (["train", "--recipe", "nope", "--out", str(tmp_path / "c")], "unknown recipe `nope`"),
        (["train", "--model", "xviz-demo", "--out", str(tmp_path / "run")], "already holds a run: continue it with --resume"),
        (["train", "--resume", str(tmp_path / "empty")], "nothing to resume"),
        (["train", "--model", "xviz-demo", "--unfreeze", "layer9=2", "--dataset-options", "size=8", "--out", str(tmp_path / "d")],
         "unknown parameter group `layer9`"),
        (["train", "--model", "xviz-demo", "--epochs", "0", "--out", str(tmp_path / "e")], "`epochs = 0` must be at least 1"),
    ]
    for argv, fragment in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("xviz: error: ") and fragment in err, err


def test_resume_refuses_another_architecture(tmp_path):
    train(tiny(tmp_path / "run", epochs=1), log=lambda *a: None)
    with pytest.raises(XvizError, match="is a run of model `xviz-demo`, not `cifar_resnet18`"):
        train(tiny(tmp_path / "run", model="cifar_resnet18", epochs=2), resume=True)


# --- models and transfer --------------------------------------------------------------------------

def test_transfer_loads_only_matching_layers(tmp_path):
    from xviz.models import transfer_state
    from xviz import registry

    specs = registry.models()
    source = specs["cifar_resnet18"].build(10).state_dict()
    target = specs["cifar_resnet18"].build(200)
    report = transfer_state(target, source)
    assert report.skipped == ["fc.weight", "fc.bias"] and report.initialised == ["fc.weight", "fc.bias"]
    assert "shape (10, 512) vs (200, 512)" in report.summary()
    assert torch.equal(target.state_dict()["layer4.1.conv2.weight"], source["layer4.1.conv2.weight"])
    assert len(report.loaded) == len(source) - 2
    backbone_only = transfer_state(specs["cifar_resnet18"].build(10), source, exclude=("fc.",))
    assert backbone_only.reasons["fc.weight"] == "excluded"


def test_training_from_a_checkpoint_with_another_head(tmp_path, capsys):
    train(tiny(tmp_path / "src", epochs=1), log=print)
    cfg = tiny(tmp_path / "dst", epochs=1, weights=str(tmp_path / "src" / "last.pt"),
               dataset_options={"size": 12, "image_size": 32})
    train(cfg, log=print)
    out = capsys.readouterr().out
    assert "loaded 32 tensors" in out or "loaded" in out


def test_concat_head_structure():
    from xviz import registry

    model = registry.models()["resnet18"].build(7, head="concat")
    kinds = [type(m).__name__ for m in model.fc]
    assert type(model.avgpool).__name__ == "AdaptiveConcatPool2d"
    assert kinds == ["Flatten", "BatchNorm1d", "Dropout", "Linear", "ReLU", "BatchNorm1d", "Dropout", "Linear"]
    assert model.fc[1].num_features == 1024 and model.fc[2].p == 0.25 and model.fc[6].p == 0.5
    x = torch.randn(2, 512, 3, 3)
    assert torch.equal(model.avgpool(x)[:, :512, 0, 0], x.amax((2, 3)))
    with pytest.raises(XvizError, match="unknown head `mlp`"):
        registry.models()["resnet18"].build(7, head="mlp")


def test_cifar_resnet18_architecture():
    from xviz import registry

    model = registry.models()["cifar_resnet18"].build(10)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert sum(p.numel() for p in model.parameters()) == 11_173_962  # kuangliu's ResNet18
    from xviz.capture import spatial_layers

    assert spatial_layers(model, torch.randn(1, 3, 32, 32))[-1] == ("layer4", (512, 4, 4))


# --- distributed ------------------------------------------------------------------------------------

def _torchrun(args, port):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_ddp_two_processes_on_cpu(tmp_path):
    out = tmp_path / "ddp"
    proc = _torchrun(["-m", "xviz", "train", "--model", "xviz-demo", "--dataset", "synthetic", "--dataset-options",
                      "size=32", "--epochs", "2", "--batch-size", "8", "--device", "cpu", "--out", str(out)], 29517)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("epoch 2/2 - train loss") == 1  # rank 0 alone logs
    data = read_checkpoint(out / "last.pt")
    assert len(data["history"]) == 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch-0001.pt", "epoch-0002.pt"]
    best = max(h["test_acc"] for h in data["history"])
    assert proc.stdout.count("best test accuracy") == 1 and f"best test accuracy {100 * best:.2f}%" in proc.stdout


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """tests/ddp_runs.py on 2 gloo processes: a user's own model and data, three runs, then an empty dataset."""
    out = tmp_path_factory.mktemp("ddp-runs")
    proc = _torchrun([str(ROOT / "tests" / "ddp_runs.py"), str(out)], 29518)
    ranks = {name: [json.loads((out / f"{name}-rank{r}.json").read_text()) for r in (0, 1)]
             for name in ("plain", "sync-bn", "lonely") if (out / f"{name}-rank1.json").is_file()}
    return out, proc, ranks


def _one_process(tmp_path, name):
    """The scenario on one process with the same global batch (2 x the per-process batch)."""
    import ddp_runs

    settings = dict(ddp_runs.SCENARIOS[name])
    settings["batch_size"] = 2 * settings.get("batch_size", 4)
    result = train(ddp_runs.config(tmp_path / name, **settings), pm=ddp_runs.plugin_manager(), log=lambda *a: None)
    return result, ddp_runs.BUILT[-1]


@pytest.mark.parametrize("name", ["plain", "sync-bn"])
def test_two_processes_report_and_train_as_one_process_with_the_global_batch(ddp_runs, tmp_path, name):
    out, proc, ranks = ddp_runs
    assert name in ranks, proc.stderr[-3000:]
    ref, ref_model = _one_process(tmp_path, name)
    keys = ("train_loss", "train_acc", "test_loss", "test_acc", "lr")
    for rank in ranks[name]:  # every rank holds the all-rank numbers, equal to one process's
        assert [[row[k] for k in keys] for row in rank["history"]] == \
            [pytest.approx([row[k] for k in keys], rel=1e-5, abs=1e-7) for row in ref.history]
        assert rank["best_acc"] == ref.best_acc
    assert [r["main"] for r in ranks[name]] == [True, False]
    logged = [line for line in proc.stdout.split(f"--- {name}")[1].split("--- ")[0].splitlines() if line.startswith("epoch 2/2 - ")]
    last = ref.history[-1]
    assert len(logged) == 1 and logged[0].startswith(
        f"epoch 2/2 - train loss {last['train_loss']:.4f} - train acc {100 * last['train_acc']:.2f}% - test loss "
        f"{last['test_loss']:.4f} - test acc {100 * last['test_acc']:.2f}% - ")
    ours, theirs = weights(out / name / "last.pt"), ref_model.state_dict()
    for k, v in theirs.items():  # weights, and BatchNorm statistics over the combined batch with sync_bn
        assert torch.allclose(ours[k].float(), v.float(), rtol=1e-4, atol=1e-6), k
    # the test set (13 images) is sharded 7 + 6 without padding: each image tested once per epoch
    assert [r["tested"] for r in ranks[name]] == [2 * 7, 2 * 6]


def test_sync_bn_keeps_the_replicas_statistics_equal(ddp_runs):
    _, proc, ranks = ddp_runs
    assert "sync-bn" in ranks, proc.stderr[-3000:]
    rank0, rank1 = (r["buffers"] for r in ranks["sync-bn"])
    assert rank0.keys() == {"features.1.running_mean", "features.1.running_var"} and rank0 == rank1


def test_a_last_batch_of_one_per_process_is_left_out_once_said(ddp_runs):
    _, proc, ranks = ddp_runs
    assert "lonely" in ranks, proc.stderr[-3000:]  # BatchNorm1d in the head: a batch of one would crash
    assert [len(r["history"]) for r in ranks["lonely"]] == [2, 2]
    said = "the last batch of every epoch would hold 1 image per process, on which BatchNorm cannot train: it is left " \
           "out (8 of 9 images per process per epoch)"
    assert proc.stdout.count(said) == 1


@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
def test_sync_bn_conversion_keeps_each_layer_with_its_hooks(device_type):
    from xviz import registry
    from xviz.train.distributed import AllReduceBatchNorm, convert_sync_batchnorm

    torch.manual_seed(0)
    model = registry.models()["afs_resnet18"].build(6).eval()  # AFS gates hang on BatchNorm layers by hooks
    x = torch.randn(2, 3, 32, 32)
    before = model(x)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    hooks = {n: len(m._forward_hooks) for n, m in layers.items()}
    convert_sync_batchnorm(model, device_type)
    synced = torch.nn.SyncBatchNorm if device_type == "cuda" else AllReduceBatchNorm
    assert {n: m for n, m in model.named_modules() if isinstance(m, synced)} == layers  # the same objects
    assert all(isinstance(m, torch.nn.BatchNorm2d) for m in layers.values()) and sum(hooks.values()) > 0
    assert {n: len(m._forward_hooks) for n, m in layers.items()} == hooks
    assert torch.equal(model(x), before)  # evaluation (and one process) is plain BatchNorm
    assert set(model.state_dict()) == set(registry.models()["afs_resnet18"].build(6).state_dict())


def test_a_mistake_met_by_one_process_stops_all_and_is_said_by_it(ddp_runs):
    out, proc, _ = ddp_runs
    said = [json.loads((out / f"one-rank-rank{r}.json").read_text()) for r in (0, 1)]
    assert said == ["exit 2", "the dots images are missing on this machine (rank 1)"], proc.stderr[-3000:]


def test_an_empty_dataset_on_two_processes_is_one_line(ddp_runs):
    _, proc, _ = ddp_runs
    errors = [line for line in proc.stderr.splitlines() if "xviz: error:" in line]
    assert errors == ["xviz: error: the train split of dataset `dots` holds no images: check --data and "
                      "--dataset-options"]
    assert proc.returncode != 0 and proc.stderr.count("Traceback") <= 1  # torchrun's report of the exit, none from ranks


def test_a_last_batch_of_one_on_one_process(tmp_path, capsys):
    import ddp_runs

    pm = ddp_runs.plugin_manager()
    result = train(ddp_runs.config(tmp_path / "run", model_options={"norm": "head"}, dataset_options={"size": 9}),
                   pm=pm)
    out = capsys.readouterr().out
    assert out.count("the last batch of every epoch would hold 1 image, on which BatchNorm cannot train: it is left "
                     "out (8 of 9 images per epoch)") == 1 and len(result.history) == 2
    plain = train(ddp_runs.config(tmp_path / "plain", dataset_options={"size": 9}), pm=pm)  # no BatchNorm: all 9
    assert "left out" not in capsys.readouterr().out and len(plain.history) == 2
    with pytest.raises(XvizError, match="`tiny-user` has BatchNorm layers, which cannot train on batches of one image: "
                                        "use a --batch-size of 2 or more$"):
        train(ddp_runs.config(tmp_path / "one", model_options={"norm": "conv"}, batch_size=1), pm=pm)


def test_an_empty_dataset_is_one_line(tmp_path, capsys):
    import ddp_runs

    from xviz.cli import main

    assert main(["train", "--model", "tiny-user", "--dataset", "dots", "--dataset-options", "size=0", "--out",
                 str(tmp_path / "run")], pm=ddp_runs.plugin_manager()) == 2
    assert capsys.readouterr().err == ("xviz: error: the train split of dataset `dots` holds no images: check "
                                       "--data and --dataset-options\n")


def test_training_stops_at_the_first_non_finite_loss_and_keeps_the_last_good_epoch(tmp_path, monkeypatch):
    import ddp_runs

    real, calls = ddp_runs.Tiny.forward, {"n": 0}

    def diverging(self, x):  # the 6th training batch (epoch 2, step 2 of 4) gives NaN logits
        out = real(self, x)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 6:
                return out * float("nan")
        return out

    monkeypatch.setattr(ddp_runs.Tiny, "forward", diverging)
    run = tmp_path / "run"
    with pytest.raises(XvizError) as info:
        train(ddp_runs.config(run, epochs=3, scheduler="none"), pm=ddp_runs.plugin_manager(), log=lambda *a: None)
    assert str(info.value) == (f"the training loss is not finite (nan) at epoch 2, step 2 of 4 (lr 0.2): training "
                               f"stopped and `{run}` keeps epoch 1 (best.pt, last.pt, its checkpoint); start again "
                               "with a lower --lr")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch-0001.pt"]
    for name in ("best.pt", "last.pt"):
        data = read_checkpoint(run / name)
        assert data["epoch"] == 1 and all(torch.isfinite(v).all() for v in data["state_dict"].values())


def test_lr_inf_saves_no_nan_model(tmp_path, capsys):
    from xviz.cli import main

    run = tmp_path / "run"
    code = main(["train", "--model", "xviz-demo", "--dataset-options", "size=16", "--batch-size", "8",
                 "--lr", "1e30", "--out", str(run)])
    err = capsys.readouterr().err.split("\r")[-1]  # what the terminal shows once the progress bar is cleared
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("xviz: error: the training loss is not finite (nan) at epoch 1, step 2 of 2 (lr ")
    assert err.endswith("training stopped and nothing was saved; start again with a lower --lr\n")
    assert not (run / "best.pt").exists() and not (run / "last.pt").exists()


# --- commands around training ---------------------------------------------------------------------

def test_plot_history_and_lr_find_commands(tmp_path, capsys):
    from PIL import Image

    from xviz.cli import main

    train(tiny(tmp_path / "a", epochs=2), log=lambda *a: None)
    train(tiny(tmp_path / "b", epochs=2, augment=[]), log=lambda *a: None)
    capsys.readouterr()
    assert main(["plot-history", str(tmp_path / "a"), str(tmp_path / "b" / "last.pt"), "--label", "crop+flip",
                 "--label", "plain", "--out", str(tmp_path / "h.png")]) == 0
    assert f"wrote {tmp_path / 'h.png'}" in capsys.readouterr().out
    with Image.open(tmp_path / "h.png") as im:
        assert im.format == "PNG" and im.size[0] > 600
    assert main(["lr-find", "--model", "xviz-demo", "--dataset-options", "size=32", "--batch-size", "8",
                 "--iterations", "12", "--plot", str(tmp_path / "lr.png")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"suggested learning rate \S+ \(valley\); steepest descent at \S+", out)
    with Image.open(tmp_path / "lr.png") as im:
        assert im.format == "PNG"
    assert main(["plot-history", str(tmp_path / "missing")]) == 2


def test_recipes_command_lists_every_recipe(capsys):
    from xviz.cli import main

    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in RECIPE_NAMES)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_corrupt_image_during_training_is_one_line(tmp_path, capsys, monkeypatch, workers):
    from xviz.cli import main
    from xviz.data import synthetic

    real = synthetic.SyntheticParts.sample

    def damaged(self, index):
        if index == 5:
            raise XvizError("image `train/0005.png` is damaged or truncated (broken data stream): re-export or replace it")
        return real(self, index)

    monkeypatch.setattr(synthetic.SyntheticParts, "sample", damaged)
    code = main(["train", "--model", "xviz-demo", "--dataset-options", "size=16", "--batch-size", "8",
                 "--workers", str(workers), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err == ("xviz: error: image `train/0005.png` is damaged or truncated (broken data stream): "
                                 "re-export or replace it")


# --- regularisers from plugins --------------------------------------------------------------------

class HeadNormPlugin:
    """A third-party regulariser through the ``xviz_register_regularizers`` hook: R = ||W_head||^2."""

    built = []

    @staticmethod
    def make(model, source, head, example):
        from xviz.regularizers import Regularizer

        class HeadNorm(Regularizer):
            def penalty(self, inputs):
                return sum(p.pow(2).sum() for n, p in self.model.named_parameters() if n.startswith(head + "."))

        HeadNormPlugin.built.append((head, tuple(example.shape), source.training,
                                     any(p.requires_grad for p in source.parameters())))
        return HeadNorm(model, source)

    from xviz import hookimpl

    @hookimpl
    def xviz_register_regularizers(self):
        from xviz.regularizers import RegularizerSpec

        return [RegularizerSpec("head-norm", HeadNormPlugin.make, "squared norm of the classifier")]


def test_a_plugin_regulariser_is_added_to_the_loss(tmp_path):
    from xviz.registry import get_plugin_manager

    pm = get_plugin_manager(entrypoints=False)
    pm.register(HeadNormPlugin(), name="head-norm-plugin")
    head_norm = {}
    for lam in (0.0, 1.0):
        result = train(tiny(tmp_path / f"run{lam}", reg="head-norm", reg_lambda=lam, epochs=2), pm=pm, log=lambda *a: None)
        state = weights(result.run / "last.pt")
        head_norm[lam] = sum(v.pow(2).sum().item() for k, v in state.items() if k.startswith("classifier."))
        assert all(row["train_reg"] > 0 for row in result.history)
    assert head_norm[1.0] < 0.5 * head_norm[0.0]  # the penalty shrank the classifier
    head, example_shape, source_training, source_trainable = HeadNormPlugin.built[-1]
    assert head == "classifier" and example_shape == (2, 3, 64, 64)
    assert not source_training and not source_trainable  # the source is frozen, in eval mode
    with pytest.raises(XvizError, match="unknown regulariser `head-nrm`.*did you mean `head-norm`"):
        train(tiny(tmp_path / "typo", reg="head-nrm"), pm=pm, log=lambda *a: None)
