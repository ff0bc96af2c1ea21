"""One resolver behind --model and xviz.load_model: every torchvision classifier, a user's file, timm."""

import importlib.util

import pytest
import torch
import torchvision

from xviz.errors import XvizError
from xviz.explainer import explain_tensors
from xviz.models import load_model, resolve_spec
from xviz.registry import get_plugin_manager

PM = get_plugin_manager(entrypoints=False)
TORCHVISION_CLASSIFIERS = torchvision.models.list_models(module=torchvision.models)


def test_every_torchvision_classifier_resolves():
    from xviz import registry

    specs = registry.models(PM)
    for name in TORCHVISION_CLASSIFIERS:
        spec = resolve_spec(name, specs, PM)
        assert spec.name == name
        assert spec.num_classes == 1000 and len(spec.class_names) == 1000  # from the weights' metadata
        assert spec.preprocessing.crop >= 224


def test_an_unknown_name_says_did_you_mean():
    with pytest.raises(XvizError, match="unknown model `resnet19`: did you mean `resnet18`"):
        load_model("resnet19", weights="none", pm=PM)


# a representative of each family at a small input, with the layer xviz explains by default
FAMILIES = [
    ("resnet18", 64, "layer4"), ("regnet_y_400mf", 64, "trunk_output"), ("densenet121", 64, "features.norm5"),
    ("vgg11", 64, "features.19"), ("mobilenet_v3_small", 64, "features"), ("efficientnet_b0", 64, "features"),
    ("mnasnet0_5", 64, "layers"), ("shufflenet_v2_x0_5", 64, "conv5"), ("squeezenet1_0", 64, "features"),
    ("alexnet", 128, "features"), ("googlenet", 64, None),
    pytest.param("resnext50_32x4d", 64, "layer4", marks=pytest.mark.slow),
    pytest.param("wide_resnet50_2", 64, "layer4", marks=pytest.mark.slow),
    pytest.param("efficientnet_v2_s", 64, "features", marks=pytest.mark.slow),
    pytest.param("convnext_tiny", 64, "features", marks=pytest.mark.slow),
    pytest.param("swin_t", 64, None, marks=pytest.mark.slow),
    pytest.param("vit_b_16", 224, "encoder.layers.encoder_layer_11.ln_1", marks=pytest.mark.slow),
    pytest.param("maxvit_t", 224, None, marks=pytest.mark.slow),
    pytest.param("inception_v3", 96, None, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("name,size,layer", FAMILIES)
def test_a_torchvision_family_builds_and_explains_at_a_small_size(name, size, layer):
    loaded = load_model(name, weights="none", num_classes=7, size=size, pm=PM)
    assert loaded.class_names == [str(i) for i in range(7)]
    torch.manual_seed(0)
    [exp] = explain_tensors(loaded, torch.randn(1, 3, size, size), ["gradcam"], pm=PM)
    assert exp.maps.shape == (1, 1, size, size) and (exp.maps >= 0).all() and (exp.maps <= 1).all()
    if layer is not None:
        assert exp.layer == layer


def test_every_torchvision_family_has_a_representative():
    names = {getattr(p, "values", p)[0] for p in FAMILIES}
    family = lambda n: n.split("_")[0].rstrip("0123456789").removesuffix("v")  # noqa: E731
    missing = {family(n) for n in TORCHVISION_CLASSIFIERS} - {family(n) for n in names}
    assert not missing, f"no representative built for torchvision families {sorted(missing)}"


MODEL_FILE = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, classes=4, width=8):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(width, classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def make(classes=4, width=8):
    return Net(classes, width)


def broken(**kwargs):
    raise ValueError("no such width")


def not_a_module():
    return 42


def segmenter():
    return nn.Conv2d(3, 2, 1)


NOT_CALLABLE = 3
'''


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "my_models.py"
    path.write_text(MODEL_FILE)
    return path


def test_a_model_from_the_user_s_file_with_options_and_weights(run_cli, tmp_path, model_file):
    from PIL import Image

    spec = importlib.util.spec_from_file_location("users", model_file)
    users = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(users)
    torch.manual_seed(3)
    net = users.make(classes=3, width=6)
    torch.save({"model": net.state_dict()}, tmp_path / "net.pt")
    (tmp_path / "names.txt").write_text("cat\ndog\nfox\n")
    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "red.png")
    code, out, err = run_cli("explain", "--model", f"{model_file}:make", "--model-option", "classes=3",
                             "--model-option", "width=6", "--weights", tmp_path / "net.pt", "--classes",
                             tmp_path / "names.txt", "--size", 32, "--out", tmp_path / "out", tmp_path / "red.png")
    assert code == 0, err
    assert any(n in out for n in ("cat", "dog", "fox")) and (tmp_path / "out" / "red_gradcam.png").is_file()
    loaded = load_model(f"{model_file}:make", weights=str(tmp_path / "net.pt"), options={"classes": 3, "width": 6})
    for a, b in zip(loaded.module.state_dict().values(), net.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("factory,options,message", [
    ("NOT_CALLABLE", [], "has no callable `NOT_CALLABLE`"),
    ("missing", [], "has no callable `missing`"),
    ("broken", ["width=3"], "raised ValueError: no such width"),
    ("not_a_module", [], "returned a int, not a torch.nn.Module"),
    ("segmenter", [], "returns (1, 2, 224, 224), not (N, classes) logits"),
    ("make", ["colour"], "`--model-option colour` must be KEY=VALUE"),
])
def test_bad_model_files_are_one_line(run_cli, tmp_path, model_file, factory, options, message):
    from PIL import Image

    Image.new("RGB", (40, 40)).save(tmp_path / "a.png")
    flags = [f for o in options for f in ("--model-option", o)]
    code, out, err = run_cli("explain", "--model", f"{model_file}:{factory}", *flags, "--out", tmp_path / "out",
                             tmp_path / "a.png")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_a_file_that_does_not_exist_or_import(run_cli, tmp_path):
    code, _, err = run_cli("layers", "--model", f"{tmp_path}/nope.py:make")
    assert code == 2 and "does not exist" in err
    (tmp_path / "bad.py").write_text("import no_such_module_xyz\n")
    code, _, err = run_cli("layers", "--model", f"{tmp_path}/bad.py:make")
    assert code == 2 and "importing" in err and "ModuleNotFoundError" in err


def test_timm_models(run_cli, tmp_path, monkeypatch):
    timm = pytest.importorskip("timm")
    from PIL import Image

    loaded = load_model("timm:resnet18", weights="none", size=64, pm=PM)
    assert loaded.name == "timm:resnet18" and len(loaded.class_names) == 1000
    [exp] = explain_tensors(loaded, torch.randn(1, 3, 64, 64), ["gradcam"], pm=PM)
    assert exp.layer == "layer4"
    with pytest.raises(XvizError, match="unknown timm model `resnet_18`: did you mean `resnet18`"):
        load_model("timm:resnet_18", weights="none", pm=PM)
    import xviz_zoo.timm_models as timm_models

    real_create = timm_models._create

    def offline(name, pretrained, *args):  # what the hub raises without a network, without touching it
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")
        return real_create(name, pretrained, *args)

    monkeypatch.setattr(timm_models, "_create", offline)
    Image.new("RGB", (40, 40)).save(tmp_path / "a.png")
    code, _, err = run_cli("explain", "--model", "timm:resnet18", "--out", tmp_path / "out", tmp_path / "a.png")
    assert code == 2 and "--weights none" in err and timm_models.cache_folder() in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert timm.__version__


def test_timm_missing_is_one_line(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_timm(name, *args, **kwargs):
        if name == "timm" or name.startswith("timm."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_timm)
    with pytest.raises(XvizError, match=r"pip install 'xviz\[timm\]'"):
        load_model("timm:resnet18", weights="none", pm=PM)


def test_a_plugin_resolves_model_names_of_its_own(pm):
    from xviz import hookimpl
    from xviz.images import Preprocessing
    from xviz.specs import ModelSpec

    class Prefixed:
        @hookimpl
        def xviz_resolve_model(self, name):
            if not name.startswith("lab:"):
                return None
            width = int(name.removeprefix("lab:"))
            return ModelSpec(name, lambda num_classes: torch.nn.Sequential(
                torch.nn.Conv2d(3, width, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                torch.nn.Linear(width, num_classes)), Preprocessing(32, 32, (0.5,) * 3, (0.5,) * 3), ("a", "b"))

    pm.register(Prefixed(), name="lab")
    loaded = load_model("lab:6", weights="none", pm=pm)
    assert loaded.name == "lab:6" and loaded.module[0].out_channels == 6 and loaded.class_names == ["a", "b"]
    assert load_model("resnet18", weights="none", size=32, pm=pm).name == "resnet18"  # the zoo still answers
