"""AFS pruned for real: the masked channels removed from the weights give the gated network's output,
its gradients and explanations, and `xviz afs-update --prune` writes a checkpoint that loads as the
smaller network."""

import copy

import pytest
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

import xviz
from xviz.checkpoint import checkpoint_payload, save_checkpoint
from xviz.errors import XvizError
from xviz_afs.gates import add_gates, gates, recording
from xviz_afs.pruning import is_pruned, prune, pruned_channels, static_channels
from xviz_afs.sparse import estimate_macs, sparse_forward


def masked_resnet(block, seed=0, ratio=0.5):
    """A user's gated ResNet after a mask update: per layer a random third of the channels masked
    (m = 0), half of the rest static (s = 0, gamma their scale), one layer masked whole."""
    torch.manual_seed(seed)
    model = add_gates(ResNet(block, [1, 1, 1, 1], num_classes=5), ratio)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    for i, gate in enumerate(gates(model).values()):
        gate.m.copy_((torch.rand(gate.m.shape) > 0.33).float() if i != 2 else torch.zeros(gate.m.shape))
        gate.s.copy_((torch.rand(gate.s.shape) > 0.5).float())
    return model.eval()


def x_batch(n=5, size=40, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("block", [BasicBlock, Bottleneck])
def test_the_pruned_network_is_the_gated_network_made_smaller(block):
    gated = masked_resnet(block)
    kept = static_channels(gated)
    pruned = prune(copy.deepcopy(gated)).eval()
    x = x_batch()
    with torch.no_grad():
        assert torch.allclose(pruned(x), gated(x), rtol=1e-5, atol=1e-5)
    before, after, previous = dict(gated.named_modules()), dict(pruned.named_modules()), None
    for name in kept:  # the kept rows of each weight, and of the block's next weight the matching columns
        expected = before[name].weight[kept[name]]
        if not name.endswith("conv1"):
            expected = expected[:, kept[previous]]
        assert torch.equal(after[name].weight, expected), name
        previous = name
    assert sum(p.numel() for p in pruned.parameters()) < 0.8 * sum(p.numel() for p in gated.parameters())
    assert pruned_channels(pruned) == kept and is_pruned(pruned) and not is_pruned(gated)
    macs = estimate_macs(pruned, 40)
    assert macs.gated < estimate_macs(gated, 40).dense * 0.8


def test_a_wholly_masked_layer_keeps_one_channel_multiplied_by_zero():
    gated = masked_resnet(BasicBlock)
    name = list(gates(gated))[2]
    pruned = prune(copy.deepcopy(gated)).eval()
    assert dict(pruned.named_modules())[name].out_channels == 1
    with torch.no_grad(), recording(pruned) as records:
        pruned(x_batch())
    assert torch.count_nonzero(records[name]["output"]) == 0


def test_gradients_and_explanations_of_the_pruned_network_are_the_gated_ones():
    gated = masked_resnet(BasicBlock)
    pruned = prune(copy.deepcopy(gated)).eval()
    x = x_batch(3)
    one, two = (xviz.explain_tensors(m, x, ["gradcam", "afs-channels"], layer="layer4") for m in (gated, pruned))
    for a, b in zip(one, two):
        assert (a.method, a.layer) == (b.method, b.layer)
        assert a.raw == pytest.approx(b.raw, rel=1e-4, abs=1e-5)
    inputs = [x.clone().requires_grad_() for _ in range(2)]
    for model, x_in in zip((gated, pruned), inputs):
        model(x_in)[:, 1].sum().backward()
    assert torch.allclose(inputs[0].grad, inputs[1].grad, rtol=1e-4, atol=1e-6)


def test_pruning_says_what_is_wrong():
    gated = masked_resnet(BasicBlock)
    with pytest.raises(XvizError, match="no kept channels given for the gated layers layer1.0.conv2"):
        prune(copy.deepcopy(gated), {"layer1.0.conv1": [0]})
    bad = {name: [0, 9999] for name in gates(gated)}
    bad["layer1.0.conv1"] = [0, 1]
    untouched = copy.deepcopy(gated)
    with pytest.raises(XvizError, match="kept channels of `layer1.0.conv2` must be"):
        prune(untouched, bad)
    assert not is_pruned(untouched) and untouched.layer1[0].conv1.out_channels == 64  # nothing cut
    pruned = prune(copy.deepcopy(gated))
    with pytest.raises(XvizError, match="pruned already"):
        prune(pruned)
    with pytest.raises(XvizError, match="pruned"):
        sparse_forward(pruned, x_batch(1))
    with pytest.raises(XvizError, match="no AFS gates"):
        prune(ResNet(BasicBlock, [1, 1, 1, 1]))


def test_afs_update_prune_writes_a_checkpoint_that_loads_smaller_and_explains(run_cli, tmp_path):
    from xviz.images import Preprocessing
    from xviz.models import load_model
    from xviz_afs import build

    torch.manual_seed(0)
    model = build(18, 10, ratio=0.5)
    source = tmp_path / "afs.pt"
    save_checkpoint(source, **checkpoint_payload(arch="afs_resnet18", state_dict=model.state_dict(),
                                                 class_names=[str(i) for i in range(10)],
                                                 preprocessing=Preprocessing(64, 64, (0.5,) * 3, (0.25,) * 3),
                                                 arch_options={"ratio": 0.5}))
    flags = ["--checkpoint", source, "--limit", "8", "--thres-m", "0.45", "--thres-s", "0.5"]
    code, out, err = run_cli("afs-update", *flags, "--out", tmp_path / "masked.pt")
    assert code == 0, err
    code, out, err = run_cli("afs-update", *flags, "--prune")
    assert code == 0, err
    assert "pruned: the masked channels are removed" in out and str(tmp_path / "pruned.pt") in out
    masked, pruned = load_model(checkpoint=tmp_path / "masked.pt"), load_model(checkpoint=tmp_path / "pruned.pt")
    assert is_pruned(pruned.module) and not is_pruned(masked.module)
    kept = {n: int(g.m.sum()) for n, g in gates(masked.module).items()}
    assert any(k < g.m.numel() for k, g in zip(kept.values(), gates(masked.module).values()))
    for name, conv in pruned.module.named_modules():
        if name in kept:
            assert conv.out_channels == max(kept[name], 1)
    x = x_batch(4, 64)
    with torch.no_grad():
        assert torch.allclose(pruned.module(x), masked.module(x), rtol=1e-5, atol=1e-5)
    image = tmp_path / "img.png"
    from PIL import Image

    Image.new("RGB", (40, 32), (120, 30, 200)).save(image)
    code, out, err = run_cli("explain", "--checkpoint", tmp_path / "pruned.pt", "--method", "gradcam,afs-channels",
                             "--out", tmp_path / "out", image)
    assert code == 0, err
    assert (tmp_path / "out" / "img_gradcam.png").is_file()
