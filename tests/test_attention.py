"""Learn to Pay Attention networks: the attention block by hand, the variants, transfer between input sizes."""

import math

import pytest
import torch

from xviz import registry
from xviz.errors import XvizError
from xviz.models import load_checkpoint, transfer_state
from xviz_attention.models import AttentionBlock, AttnVGG

L = torch.tensor([[[[1.0, 2.0], [0.0, -1.0]], [[0.5, 0.0], [1.0, 2.0]]]])  # (1, 2, 2, 2)
G = torch.tensor([[[[1.0]], [[-1.0]]]])  # (1, 2, 1, 1)


def test_pc_softmax_block_by_hand():
    block = AttentionBlock(2, "pc", "softmax")
    with torch.no_grad():
        block.u.weight.copy_(torch.tensor([2.0, 1.0]).view(1, 2, 1, 1))
    c, g_s = block(L, G)
    # c_ij = 2 (l0 + 1) + 1 (l1 - 1): [[4 - 0.5, 6 - 1], [2 + 0, 0 + 1]] = [[3.5, 5], [2, 1]]
    assert torch.allclose(c, torch.tensor([[[[3.5, 5.0], [2.0, 1.0]]]]))
    e = [math.exp(v) for v in (3.5, 5.0, 2.0, 1.0)]
    a = [v / sum(e) for v in e]
    expected = torch.tensor([[a[0] * 1 + a[1] * 2 + a[2] * 0 + a[3] * -1, a[0] * 0.5 + a[1] * 0 + a[2] * 1 + a[3] * 2]])
    assert torch.allclose(g_s, expected, atol=1e-6)
    assert torch.allclose(block.normalized(c).flatten(), torch.tensor(a), atol=1e-7)
    assert block.normalized(c).sum().item() == pytest.approx(1.0)


def test_dp_sigmoid_block_by_hand():
    block = AttentionBlock(2, "dp", "sigmoid")
    assert block.u is None  # no parameters
    c, g_s = block(L, G)
    # c_ij = <l_ij, g> = l0 - l1: [[0.5, 2], [-1, -3]]
    assert torch.allclose(c, torch.tensor([[[[0.5, 2.0], [-1.0, -3.0]]]]))
    s = [1 / (1 + math.exp(-v)) for v in (0.5, 2.0, -1.0, -3.0)]
    l0, l1 = (1.0, 2.0, 0.0, -1.0), (0.5, 0.0, 1.0, 2.0)
    expected = torch.tensor([[sum(a * x for a, x in zip(s, l0)) / 4, sum(a * x for a, x in zip(s, l1)) / 4]])
    assert torch.allclose(g_s, expected, atol=1e-6)


@pytest.mark.parametrize("attention", ["before", "after"])
@pytest.mark.parametrize("normalize", ["softmax", "sigmoid"])
def test_attention_maps_of_the_network(attention, normalize):
    torch.manual_seed(0)
    net = AttnVGG(5, attention, "pc", normalize, input_size=64, width=0.125).eval()
    maps = {}
    for name in net.attention_layers:
        block = getattr(net, name)
        block.register_forward_hook(lambda m, i, o, name=name: maps.__setitem__(name, m.normalized(o[0])))
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    sizes = {"before": [64, 32, 16], "after": [32, 16, 8]}[attention]
    assert [maps[n].shape[-1] for n in net.attention_layers] == sizes
    for a in maps.values():
        if normalize == "softmax":
            assert torch.allclose(a.sum(dim=(2, 3)), torch.ones(2, 1), atol=1e-5)
        else:
            assert ((a > 0) & (a < 1)).all()


def test_variants_and_initialisation():
    torch.manual_seed(0)
    plain = AttnVGG(10, "none", input_size=32, width=0.25)
    assert plain.attention_layers == [] and plain.classify.in_features == 128
    net = AttnVGG(10, "before", "pc", input_size=32)
    assert net.classify.in_features == 1536 and net.projector.weight.shape == (512, 256, 1, 1)
    assert net.dense.kernel_size == (1, 1) and AttnVGG(10, input_size=224, width=0.125).dense.kernel_size == (7, 7)
    bn = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(0 <= m.weight.min() and m.weight.max() <= 1 and m.bias.abs().sum() == 0 for m in bn)
    assert net.cb1[0].bias.abs().sum() == 0
    with pytest.raises(XvizError, match="unknown attention `middle`"):
        AttnVGG(10, "middle")
    with pytest.raises(XvizError, match="built for 32x32 inputs, not 64x64"):
        net(torch.randn(1, 3, 64, 64))


def test_transfer_from_32_to_64_pixels_loads_exactly_the_requested_layers():
    specs = registry.models()
    source = specs["attn_vgg"].build(100, input_size=32, width=0.125).state_dict()
    target = specs["attn_vgg"].build(6, input_size=64, width=0.125)
    convs_only = transfer_state(target, source, exclude=("dense.", "projector.", "attn1.", "attn2.", "attn3.", "classify."))
    assert convs_only.loaded and all(name.startswith("cb") for name in convs_only.loaded)
    assert {n for n in source if n.startswith("cb")} == set(convs_only.loaded)
    everything = transfer_state(specs["attn_vgg"].build(6, input_size=64, width=0.125), source)
    assert everything.reasons["dense.weight"].startswith("shape (64, 64, 1, 1) vs (64, 64, 2, 2)")
    assert "classify.weight" in everything.skipped and "attn1.u.weight" in everything.loaded


def test_train_and_reload_through_the_subsystem(tmp_path):
    from xviz.train import TrainConfig, train

    cfg = TrainConfig(model="attn_vgg", model_options={"input_size": 64, "width": 0.125, "attention": "after"},
                      dataset="synthetic", dataset_options={"size": 12}, epochs=1, batch_size=6,
                      out=str(tmp_path / "run")).validate()
    train(cfg, log=lambda *a: None)
    loaded = load_checkpoint(tmp_path / "run" / "last.pt")
    assert isinstance(loaded.module, AttnVGG) and loaded.module.attention == "after"
    assert loaded.module(torch.randn(1, 3, 64, 64)).shape == (1, 6)


# --- the `attention` method and the part-attention report -----------------------------------------

class MaskAttention(torch.nn.Module):
    """A third-party model following the attention protocol: its one block attends where channel 0 is
    bright (`sharp`) or nowhere in particular (`flat`)."""

    class Block(torch.nn.Module):
        def __init__(self, scale):
            super().__init__()
            self.scale = scale

        def normalized(self, c):
            n, _, h, w = c.shape
            return torch.softmax(c.reshape(n, 1, -1), dim=2).reshape(n, 1, h, w)

        def forward(self, x):
            return self.scale * x[:, :1], None

    def __init__(self, scale=100.0):
        super().__init__()
        self.look = self.Block(scale)
        self.fc = torch.nn.Linear(3, 6)
        self.attention_layers = ["look"]

    def forward(self, x):
        c, _ = self.look(x)
        return self.fc(x.mean((2, 3))) + 0 * c.sum()


class MaskedData:
    """Synthetic images replaced by their part masks in channel 0, so the 'right' answer is known."""

    def __init__(self, n=12):
        from xviz.data.synthetic import sample

        self.samples = [sample(i, "test") for i in range(n)]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        x = torch.zeros(3, 64, 64)
        x[0] = torch.from_numpy(self.samples[i].masks["part"]).float()
        return x, self.samples[i].label

    def masks(self, i):
        return self.samples[i].masks


def test_attention_method_one_forward_pass_and_protocol(pm):
    from xviz.explainer import explain_tensors

    torch.manual_seed(0)
    net = AttnVGG(6, input_size=64, width=0.125).eval()
    calls = []
    net.register_forward_hook(lambda *a: calls.append(1))
    exps = explain_tensors(net, torch.randn(2, 3, 64, 64), ["attention", "gradcam"], layer="cb5", topk=2, pm=pm)
    assert len(calls) == 1
    assert [(e.method, e.layer) for e in exps] == [("attention", "attn1"), ("attention", "attn2"),
                                                  ("attention", "attn3"), ("gradcam", "cb5")]
    for e in exps[:3]:
        assert e.maps.shape == (2, 2, 64, 64)
        assert abs(e.raw[:, 0].sum(axis=(1, 2)) - 1).max() < 1e-5  # softmax maps as the network uses them
        assert (e.raw[:, 0] == e.raw[:, 1]).all()  # attention does not depend on the target
    third_party = explain_tensors(MaskAttention(), MaskedData(2)[0][0][None], ["attention"], pm=pm)
    assert third_party[0].layer == "look"


def test_attention_does_not_apply_to_plain_models(pm):
    import torchvision

    from xviz.explainer import explain_tensors

    with pytest.raises(XvizError, match="no attention blocks .* `attention` does not apply; use .*gradcam, gradcampp"):
        explain_tensors(torchvision.models.resnet18(), torch.randn(1, 3, 32, 32), ["attention"], pm=pm)


def test_part_attention_report_on_known_answers(pm):
    from xviz_attention.report import area_shares, part_attention

    data = MaskedData(12)
    [sharp] = [r for r in part_attention(MaskAttention(100.0), data, methods=["attention"], pm=pm)]
    assert sharp.mass["part"] > 0.99 and sharp.pointing == 1.0 and sharp.degenerate == 0.0
    [flat] = part_attention(MaskAttention(0.0), data, methods=["attention"], pm=pm)
    area = area_shares(data)
    assert flat.degenerate == 1.0
    assert all(abs(flat.mass[k] - area[k]) < 1e-6 for k in area)  # a uniform map's mass is the area


def test_attention_report_command(tmp_path, capsys):
    from xviz.checkpoint import save_checkpoint
    from xviz.cli import main
    from xviz.data.synthetic import CLASSES
    from xviz_zoo.demo import PREPROCESSING

    torch.manual_seed(0)
    net = registry.models()["attn_vgg"].build(6, input_size=64, width=0.125)
    save_checkpoint(tmp_path / "a.pt", arch="attn_vgg", arch_options={"input_size": 64, "width": 0.125},
                    state_dict=net.state_dict(), class_names=CLASSES, preprocessing=PREPROCESSING)
    assert main(["attention-report", "--checkpoint", str(tmp_path / "a.pt"), "--limit", "8",
                 "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "attention attn1" in out and "gradcampp" in out and "(uniform map)" in out
    assert (tmp_path / "rep" / "part_attention.csv").read_text().startswith("source,part_mass")
    from PIL import Image

    with Image.open(tmp_path / "rep" / "part_attention.png") as im:
        assert im.format == "PNG"


def sharpened(normalize: str, size: int = 32) -> AttnVGG:
    """An attention net whose compatibility scores are large enough that sigmoid maps span much of (0, 1)."""
    torch.manual_seed(0)
    net = AttnVGG(6, "before", "pc", normalize, input_size=size, width=0.125).eval()
    with torch.no_grad():
        for name in net.attention_layers:
            getattr(net, name).u.weight.mul_(40)
    return net


def reference_view(net: AttnVGG, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """SaoYan/LearnToPayAttention's visualize_attn_softmax / visualize_attn_sigmoid, transcribed: the block's
    map upsampled by up_factor (bilinear, align_corners=False); softmax maps min-max per image
    (make_grid normalize=True, scale_each=True), sigmoid maps as they are."""
    import torch.nn.functional as F

    scores = {}
    handles = [getattr(net, n).register_forward_hook(lambda m, i, o, n=n: scores.__setitem__(n, o[0]))
               for n in net.attention_layers]
    with torch.no_grad():
        net(x)
    for h in handles:
        h.remove()
    out = {}
    for name, c in scores.items():
        n, _, w, h = c.shape
        if net.attn1.normalize == "softmax":
            a = F.softmax(c.view(n, 1, -1), dim=2).view(n, 1, w, h)
        else:
            a = torch.sigmoid(c)
        up_factor = x.shape[-1] // w
        if up_factor > 1:
            a = F.interpolate(a, scale_factor=up_factor, mode="bilinear", align_corners=False)
        if net.attn1.normalize == "softmax":
            lo, hi = a.amin(dim=(2, 3), keepdim=True), a.amax(dim=(2, 3), keepdim=True)
            a = (a - lo) / (hi - lo)
        out[name] = a[:, 0]
    return out


@pytest.mark.parametrize("normalize", ["sigmoid", "softmax"])
def test_the_reference_view_draws_maps_as_the_authors_code_does(pm, normalize):
    from xviz.explainer import explain_tensors

    net, x = sharpened(normalize), torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    expected = reference_view(net, x)
    default = {e.layer: e for e in explain_tensors(net, x, ["attention"], pm=pm)}
    shown = {e.layer: e for e in explain_tensors(net, x, ["attention-reference"], pm=pm)}
    for name in net.attention_layers:
        assert (shown[name].raw == default[name].raw).all()  # the view changes the display, never the values
        assert torch.allclose(torch.from_numpy(shown[name].maps[:, 0]), expected[name], atol=1e-5)
        flat = default[name].maps.reshape(2, -1)
        assert (flat.min(1) == 0).all() and (flat.max(1) == 1).all()  # the default: every map spans [0, 1]
    if normalize == "sigmoid":  # unscaled: the maps keep their own range, which min-max would stretch
        spans = [float(e.maps.max() - e.maps.min()) for e in shown.values()]
        assert min(spans) < 0.9 and max(spans) > 0.2, spans


def test_the_reference_view_from_the_command_line(tmp_path, capsys):
    from PIL import Image

    from xviz.checkpoint import save_checkpoint
    from xviz.cli import main
    from xviz.data.synthetic import CLASSES
    from xviz_zoo.demo import PREPROCESSING

    options = {"input_size": 64, "width": 0.125, "normalize": "sigmoid"}
    torch.manual_seed(0)
    net = registry.models()["attn_vgg"].build(6, **options)
    save_checkpoint(tmp_path / "a.pt", arch="attn_vgg", arch_options=options, state_dict=net.state_dict(),
                    class_names=CLASSES, preprocessing=PREPROCESSING)
    code = main(["explain", "--checkpoint", str(tmp_path / "a.pt"), "--method", "attention-reference",
                 "--out", str(tmp_path / "o"), "plugins/xviz_zoo/assets/samples/winged.png"])
    assert code == 0, capsys.readouterr().err
    written = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert written == ["winged_attention-reference-attn1.png", "winged_attention-reference-attn2.png",
                       "winged_attention-reference-attn3.png", "winged_attention-reference_layers.png"]
    with Image.open(tmp_path / "o" / written[-1]) as im:
        assert im.format == "PNG"


def test_an_unknown_attention_view_is_a_one_line_error():
    from xviz_attention import AttentionMaps

    with pytest.raises(XvizError, match="unknown attention view `unscaled`: choose min-max or reference"):
        AttentionMaps("unscaled")
