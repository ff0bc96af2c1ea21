"""The user's own model, weights, class names and images: the CLI and the Python API."""

import json
import warnings

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import xviz
from xviz.errors import XvizError
from xviz.images import Preprocessing
from xviz.models import load_model

SMALL = Preprocessing(64, 64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.fixture(scope="module")
def resnet102():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=102).eval()


@pytest.fixture
def photo(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "img.jpg"
    Image.fromarray(rng.integers(0, 255, (72, 90, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def names_file(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("\n".join(f"flower {i}" for i in range(102)) + "\n")
    return path


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "module-prefix"])
def test_cli_explains_resnet18_with_users_102_class_weights_and_names(run_cli, tmp_path, resnet102, photo,
                                                                      names_file, wrap):
    state = resnet102.state_dict()
    payload = {"plain": state, "state_dict": {"state_dict": state, "epoch": 3},
               "model": {"model": state, "optimizer_lr": 0.1},
               "module-prefix": {f"module.{k}": v for k, v in state.items()}}[wrap]
    weights = tmp_path / "my_102_class_state_dict.pt"
    torch.save(payload, weights)
    code, out, err = run_cli("explain", "--model", "resnet18", "--weights", weights, "--classes", names_file,
                             "--size", 64, "--out", tmp_path / "out", photo)
    assert code == 0, err
    with torch.no_grad():
        expected = resnet102(SMALL.tensor(Image.open(photo).convert("RGB"))[None]).argmax(1).item()
    assert f"flower {expected}" in out
    assert (tmp_path / "out" / "img_gradcam.png").is_file()


def test_target_by_a_name_from_the_classes_file(run_cli, tmp_path, resnet102, photo, names_file):
    weights = tmp_path / "w.pth"
    torch.save(resnet102.state_dict(), weights)
    code, out, err = run_cli("explain", "--model", "resnet18", "--weights", weights, "--classes", names_file,
                             "--target", "flower 7", "--size", 64, "--out", tmp_path / "out", photo)
    assert code == 0, err
    assert "flower 7 (" in out


def test_json_classes_and_num_classes(tmp_path, resnet102):
    weights = tmp_path / "w.pt"
    torch.save(resnet102.state_dict(), weights)
    names = tmp_path / "names.json"
    names.write_text(json.dumps([f"c{i}" for i in range(102)]))
    loaded = load_model("resnet18", weights=str(weights), classes=str(names), num_classes=102)
    assert loaded.class_names[:2] == ["c0", "c1"] and loaded.module.fc.out_features == 102


def test_wrong_class_count_in_the_classes_file_is_one_line(run_cli, tmp_path, resnet102, photo):
    weights = tmp_path / "w.pt"
    torch.save(resnet102.state_dict(), weights)
    short = tmp_path / "three.txt"
    short.write_text("a\nb\nc\n")
    code, out, err = run_cli("explain", "--model", "resnet18", "--weights", weights, "--classes", short,
                             "--size", 64, "--out", tmp_path / "out", photo)
    assert code == 2
    assert err.strip() == f"xviz: error: `{short}` names 3 classes but the model has 102: give one name per class"


def test_a_remaining_mismatch_names_the_tensor_and_both_shapes(run_cli, tmp_path, resnet102, photo):
    weights = tmp_path / "w.pt"
    torch.save(resnet102.state_dict(), weights)
    code, _, err = run_cli("explain", "--model", "resnet18", "--weights", weights, "--num-classes", 10,
                           "--size", 64, "--out", tmp_path / "out", photo)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "`fc.weight` has shape (102, 512) in the file but (10, 512) in the model" in err
    code, _, err = run_cli("explain", "--model", "resnet34", "--weights", weights, "--size", 64,
                           "--out", tmp_path / "out", photo)
    assert code == 2 and "do not fit model `resnet34`" in err and "Traceback" not in err


def test_preprocessing_flags_override_the_model_s():
    loaded = load_model("resnet18", weights="none", size=96, mean="0.5", std="0.25,0.25,0.5")
    assert loaded.preprocessing == Preprocessing(96, 96, (0.5, 0.5, 0.5), (0.25, 0.25, 0.5), "bilinear")
    assert load_model("resnet18", weights="none", size=64, resize=80).preprocessing.resize == 80
    with pytest.raises(XvizError, match="one or three numbers"):
        load_model("resnet18", weights="none", mean="0.1,0.2")


def test_python_api_takes_a_plain_module_and_a_pil_image(resnet102, photo):
    names = [f"flower {i}" for i in range(102)]
    with pytest.warns(UserWarning, match="no preprocess= given: using ImageNet preprocessing"):
        [default] = xviz.explain(resnet102, Image.open(photo), class_names=names)
    assert default.maps.shape == (1, 1, 224, 224)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        [exp] = xviz.explain(resnet102, [Image.open(photo)], preprocess=SMALL, class_names=names, layer="layer4")
    with torch.no_grad():
        logits = resnet102(SMALL.tensor(Image.open(photo).convert("RGB"))[None])
    assert exp.prediction_names[0] == names[logits.argmax().item()]
    assert exp.maps.shape == (1, 1, 64, 64) and np.isfinite(exp.maps).all()


def test_images_as_paths_pil_arrays_and_tensors_give_the_same_maps(resnet102, photo):
    pil = Image.open(photo).convert("RGB")
    array = np.array(pil)
    forms = [str(photo), pil, array, array.astype(np.float32) / 255, torch.from_numpy(array).permute(2, 0, 1),
             torch.from_numpy(array).permute(2, 0, 1).float() / 255]
    [exp] = xviz.explain(resnet102, forms, preprocess=SMALL, layer="layer4")
    for i in range(1, len(forms)):
        np.testing.assert_allclose(exp.maps[i], exp.maps[0], atol=1e-5)
    with pytest.raises(XvizError, match="values in \\[0, 1\\]"):
        xviz.explain(resnet102, [SMALL.tensor(pil)], preprocess=SMALL, layer="layer4")


def test_wrong_number_of_class_names_is_one_line(resnet102, photo):
    with pytest.raises(XvizError, match="3 class names are given but the model scores 102 classes"):
        xviz.explain(resnet102, [photo], preprocess=SMALL, class_names=["a", "b", "c"], layer="layer4")


def test_explanation_shows_itself_plots_and_saves_overlays(resnet102, photo, tmp_path):
    import matplotlib.figure

    [exp] = xviz.explain(resnet102, [photo, photo], preprocess=SMALL, layer="layer4", topk=2)
    png = exp._repr_png_()
    assert png.startswith(b"\x89PNG")
    fig = exp.plot()
    assert isinstance(fig, matplotlib.figure.Figure)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[0].startswith(f"img.jpg: {exp.target_names[0][0]} (")
    assert len(titles) == 4
    written = exp.save(tmp_path / "saved")
    overlay = np.asarray(Image.open(written[0]).convert("RGB"), dtype=float)
    view = np.asarray(exp.images[0], dtype=float)
    from xviz.render import overlay as make_overlay

    np.testing.assert_allclose(overlay, make_overlay(exp.images[0], exp.maps[0, 0]), atol=1)
    assert overlay.shape == view.shape  # the overlay is drawn on the image, not a bare heatmap
