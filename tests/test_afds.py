"""AFDS: AFS gates (winner-take-all, masks, switching off), regularisers (L2-SP, fea-map, AFD), the
mask update, the sparse forward and MACs, training with --reg afd, afs-report / afs-update."""

import copy

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.models import resnet18
from torchvision.models.feature_extraction import create_feature_extractor
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from xviz.errors import XvizError
from xviz.registry import get_plugin_manager, regularizers
from xviz_afs import build
from xviz_afs.gates import (AFSGate, add_gates, conv_bn_pairs, gates, recording, set_gates, update_masks,
                            winner_take_all)
from xviz_afs.regularizers import stage_last_convs
from xviz_afs.sparse import estimate_macs, sparse_forward


def tiny_resnet(block=BasicBlock, classes=3, seed=0):
    torch.manual_seed(seed)
    model = ResNet(block, [1, 1, 1, 1], num_classes=classes)
    for m in model.modules():  # non-trivial BatchNorm statistics, so eval-mode tests are not degenerate
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


def x_batch(n=4, size=32, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_gate_matches_a_hand_computed_example():
    gate = AFSGate(2, 4, ratio=0.5)
    with torch.no_grad():
        gate.predictor.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]]))
        gate.predictor.bias.copy_(torch.tensor([0.0, 0.5, -1.0, 0.0]))
    gate.pooled = torch.tensor([[2.0, 1.0]])  # h = ReLU([2, 1.5, 2, -2]) = [2, 1.5, 2, 0]; top-2: channels 0, 2
    y = torch.ones(1, 4, 1, 1) * torch.tensor([1.0, 2.0, 3.0, 4.0])[None, :, None, None]
    out = gate(y)
    assert out.flatten().tolist() == [2.0, 0.0, 6.0, 0.0]
    # a static channel (s = 0) uses gamma where winner-take-all keeps it; m = 0 removes a channel
    gate.s[2] = 0.0
    gate.m[0] = 0.0
    with torch.no_grad():
        gate.gamma.copy_(torch.tensor([0.3, 0.3, 0.25, 0.3]))
    gate.pooled = torch.tensor([[2.0, 1.0]])
    assert gate(y).flatten().tolist() == [0.0, 0.0, 0.75, 0.0]


@pytest.mark.parametrize("ratio", [0.05, 0.3, 0.5, 0.9, 1.0])
def test_winner_take_all_keeps_exactly_the_top_round_d_c_channels(ratio):
    model = add_gates(tiny_resnet(), ratio).eval()
    with torch.no_grad(), recording(model) as records:
        model(x_batch())
    assert set(records) == set(gates(model))
    for name, r in records.items():
        c = r["importance"].shape[1]
        want = max(1, round(ratio * c))
        assert (r["keep"].sum(1) == want).all(), name
        # the kept ones are the largest importances of each image
        h = r["importance"]
        kept_min = torch.where(r["keep"] > 0, h, torch.full_like(h, float("inf"))).amin(1)
        dropped_max = torch.where(r["keep"] > 0, torch.full_like(h, -float("inf")), h).amax(1)
        assert (kept_min >= dropped_max).all(), name


def test_gates_switched_off_give_the_plain_network_exactly():
    plain = tiny_resnet().eval()
    gated = add_gates(copy.deepcopy(plain), 0.5).eval()
    x = x_batch()
    with torch.no_grad():
        ref = plain(x)
        set_gates(gated, False)
        assert torch.equal(gated(x), ref)
        set_gates(gated, True)
        assert not torch.allclose(gated(x), ref)
    # the original weights keep their names (transfer from a plain checkpoint works by name)
    assert set(plain.state_dict()) <= set(gated.state_dict())
    assert all(".afs." in k for k in set(gated.state_dict()) - set(plain.state_dict()))


def test_gates_start_close_to_the_network_they_were_added_to():
    plain = tiny_resnet().eval()
    gated = add_gates(copy.deepcopy(plain), 1.0).eval()
    x = x_batch()
    with torch.no_grad():
        assert torch.allclose(gated(x), plain(x), rtol=0.1, atol=0.05)


def test_a_deep_copy_has_its_own_gates():
    model = add_gates(tiny_resnet(), 0.5).eval()
    twin = copy.deepcopy(model)
    set_gates(twin, False)
    x = x_batch()
    with torch.no_grad():
        assert not torch.allclose(model(x), twin(x))
        assert torch.equal(model(x), model(x))


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(XvizError, match=r"ratio d = 1.5 must be in \(0, 1\]"):
        add_gates(tiny_resnet(), 1.5)
    with pytest.raises(XvizError, match=r"must be in \(0, 1\]"):
        build(18, 3, ratio=0)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(XvizError, match="no ResNet blocks with Conv\\+BN pairs"):
        add_gates(plain)


def test_afs_channels_on_an_ungated_model_says_what_applies(run_cli, tmp_path):
    sample = "plugins/xviz_zoo/assets/samples/winged.png"
    code, _, err = run_cli("explain", "--model", "xviz-demo", "--method", "afs-channels", "--out", tmp_path, sample)
    assert code == 2
    assert "no AFS gates" in err and "gradcam" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def _regularizer(name, model, **options):
    spec = regularizers(get_plugin_manager(entrypoints=False))[name]
    source = copy.deepcopy(model).eval().requires_grad_(False)
    return spec.build(model=model, source=source, head="fc", example=torch.zeros(2, 3, 32, 32), **options)


def _penalty(reg, model, x):
    model(x)
    return reg.penalty(x).item()


@pytest.mark.parametrize("name", ["l2-sp", "fea-map", "afd"])
def test_regularisers_are_zero_at_the_start_and_grow_as_the_target_moves(name):
    model = tiny_resnet().train()
    reg = _regularizer(name, model)
    x = x_batch()
    assert _penalty(reg, model, x) == 0.0
    direction = {n: torch.randn_like(p) for n, p in model.named_parameters()}
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    values = []
    for eps in (0.01, 0.03, 0.1):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(start[n] + eps * direction[n])
        values.append(_penalty(reg, model, x))
    assert 0 < values[0] < values[1] < values[2]
    reg.close()


def test_l2_sp_is_half_the_squared_distance_outside_the_head():
    model = tiny_resnet().train()
    reg = _regularizer("l2-sp", model)
    with torch.no_grad():
        model.conv1.weight.add_(0.1)  # in the penalty
        model.fc.weight.add_(5.0)  # the head is free
    expected = 0.5 * (0.1 ** 2) * model.conv1.weight.numel()
    assert _penalty(reg, model, x_batch()) == pytest.approx(expected, rel=1e-4)


def test_fea_map_and_afd_match_features_computed_independently():
    model = tiny_resnet().train()
    source = copy.deepcopy(model).eval()
    layers = stage_last_convs(model)
    assert layers == ["layer1.0.conv2", "layer2.0.conv2", "layer3.0.conv2", "layer4.0.conv2"]
    fea, afd = _regularizer("fea-map", model), _regularizer("afd", model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    x = x_batch()
    t_feats = create_feature_extractor(copy.deepcopy(model).train(), layers)(x)
    s_feats = create_feature_extractor(copy.deepcopy(source).train(), layers)(x)  # the target's BN mode
    want_fea = sum(0.5 * (t_feats[n] - s_feats[n]).pow(2).sum() for n in layers)  # summed over the batch
    assert _penalty(fea, model, x) == pytest.approx(want_fea.detach().item(), rel=1e-4)
    model.eval()  # in eval mode nothing is recorded: evaluation passes add no penalty
    with torch.no_grad():
        model(x)
    assert not fea.target_features.outputs
    model.train()
    want_afd = 0.0
    for net, n in zip(afd.attention, layers):
        s, t = s_feats[n], t_feats[n]
        rho = torch.softmax(net(s.flatten(2)).squeeze(-1), dim=1)
        assert torch.allclose(rho.sum(1), torch.ones(4))
        want_afd += (rho * (t - s).flatten(2).norm(dim=2)).sum().detach().item() / 4
    assert _penalty(afd, model, x) == pytest.approx(want_afd, rel=1e-4)
    # AFD's attention networks are parameters the optimiser trains; the source is not
    names = [n for n, _ in afd.named_parameters()]
    assert names and all(n.startswith("attention.") for n in names)
    assert afd.state_dict().keys() == dict(afd.named_parameters()).keys()


def _outputs(model, x, names):
    """``{name: output}`` of named layers, cloned by forward hooks as each layer runs."""
    found, handles = {}, []
    for n in names:
        handles.append(model.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: found.__setitem__(n, o.clone())))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return found


def test_distilled_features_are_copies_later_in_place_ops_cannot_change():
    model = tiny_resnet().train()
    layers = ["layer1.0.bn2", "layer3.0.bn2"]  # ``out += identity`` and the in-place ReLU follow each
    fea = _regularizer("fea-map", model, layers="+".join(layers))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    x = x_batch()
    t, s = _outputs(copy.deepcopy(model), x, layers), _outputs(copy.deepcopy(fea.source).train(), x, layers)
    want = sum(0.5 * (t[n] - s[n]).pow(2).sum() for n in layers).item()
    assert _penalty(fea, model, x) == pytest.approx(want, rel=1e-4)
    fea.close()


@pytest.mark.parametrize("name", ["fea-map", "afd"])
def test_distillation_of_a_gated_target_starts_at_its_distance_to_the_plain_source(name):
    """The source is the plain network: a gated target differs from it before any step (winner-take-all
    drops channels), so R > 0 at the start, as in the reference code; switching the gates off gives 0."""
    model = add_gates(tiny_resnet(), 0.5).train()
    reg = _regularizer(name, model)
    x = x_batch()
    layers = stage_last_convs(model)
    t = _outputs(copy.deepcopy(model), x, layers)
    plain = copy.deepcopy(model)
    set_gates(plain, False)
    s = _outputs(plain, x, layers)
    if name == "fea-map":
        want = sum(0.5 * (t[n] - s[n]).pow(2).sum() for n in layers).item()
        assert _penalty(reg, model, x) == pytest.approx(want, rel=1e-4)
    assert _penalty(reg, model, x) > 0
    set_gates(model, False)
    assert _penalty(reg, model, x) == 0.0
    reg.close()


def test_mask_update_follows_the_thresholds():
    model = add_gates(tiny_resnet(), 1.0).eval()
    found = gates(model)
    first = found["layer1.0.conv1"]
    with torch.no_grad():
        for gate in found.values():  # constant importance = ReLU(bias): no variance
            gate.predictor.weight.zero_()
            gate.predictor.bias.copy_(torch.linspace(0.0, 1.0, gate.predictor.bias.numel()))
        first.predictor.weight.normal_(0, 5.0)  # this layer's importance varies from image to image
    x = x_batch(8)
    with torch.no_grad():
        before = model(x)
    report = update_masks(model, [x], thres_s=1e-6, thres_m=0.5)
    second = found["layer1.0.conv2"]
    c = second.m.numel()
    bias = torch.linspace(0.0, 1.0, c)
    assert torch.equal(second.m, (bias > 0.5).float())  # mean pi = ReLU(bias) > thres_m
    assert second.s.sum() == 0  # variance 0 <= thres_s: every channel static
    assert torch.allclose(second.gamma, bias)  # gamma = the mean importance
    assert report["layer1.0.conv2"] == {"channels": c, "kept": int((bias > 0.5).sum()), "static": c}
    assert first.s.sum() > 0  # varying importances stay dynamic
    # with m all ones, static channels with gamma = their constant importance leave the output unchanged
    model2 = add_gates(tiny_resnet(), 1.0).eval()
    with torch.no_grad():
        for gate in gates(model2).values():
            gate.predictor.weight.zero_()
            gate.predictor.bias.fill_(0.7)
        before = model2(x)
    update_masks(model2, [x], thres_s=1e-6, thres_m=0.0)
    assert all(g.s.sum() == 0 and g.m.sum() == g.m.numel() for g in gates(model2).values())
    with torch.no_grad():
        assert torch.allclose(model2(x), before, atol=1e-6)


@pytest.mark.parametrize("block", [BasicBlock, Bottleneck])
def test_sparse_forward_equals_the_gated_network(block):
    model = add_gates(tiny_resnet(block), 0.5).eval()
    found = list(gates(model).values())
    found[1].m[: found[1].m.numel() // 2] = 0  # half the channels of one layer masked
    found[2].s[::2] = 0  # some static channels
    found[3].m.zero_()  # one layer skipped entirely
    x = x_batch(3)
    with torch.no_grad():
        dense = model(x)
    assert torch.allclose(sparse_forward(model, x), dense, atol=1e-5)


def test_macs_estimate_matches_a_hand_count():
    model = add_gates(tiny_resnet(), 0.5).eval()
    report = estimate_macs(model, 32)
    # layer1.0.conv1: 3x3, 64 -> 64 channels on an 8x8 output; half of its outputs computed
    full = 9 * 64 * 64 * 8 * 8
    assert report.per_layer["layer1.0.conv1"] == (full, full * 0.5 + 64 * 64, 0.5)
    # conv2 reads only the half of conv1's channels that were computed, and computes half of its own
    assert report.per_layer["layer1.0.conv2"][1] == full * 0.25 + 64 * 64
    plain = tiny_resnet().eval()
    gates(model)["layer2.0.conv1"].m.zero_()
    skipped = estimate_macs(model, 32)
    assert "layer2.0.conv1" in skipped.skipped
    assert skipped.per_layer["layer2.0.conv2"][1] == 128 * 128  # nothing to read: only the predictor runs
    assert skipped.gated < report.gated < report.dense
    assert report.dense == pytest.approx(_dense_macs(plain, 32))


def _dense_macs(model, size):
    total = 0
    handles = []

    def hook(m, a, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += m.kernel_size[0] * m.kernel_size[1] * m.in_channels * m.out_channels // m.groups * out.shape[2] * out.shape[3]
        else:
            total += m.in_features * m.out_features

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            handles.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    for h in handles:
        h.remove()
    return total


@pytest.fixture(scope="module")
def afd_run(tmp_path_factory):
    """A small synthetic run of afs_resnet18 trained with --reg afd (16 images, 32 px, 2 epochs)."""
    from xviz.cli import main

    out = tmp_path_factory.mktemp("afd") / "run"
    code = main(["train", "--model", "afs_resnet18", "--model-options", "ratio=0.5", "--dataset", "synthetic",
                 "--dataset-options", "size=16", "--image-size", "32", "--epochs", "2", "--batch-size", "8",
                 "--lr", "0.005", "--reg", "afd", "--reg-lambda", "0.01", "--out", str(out)])
    assert code == 0
    return out


def test_a_synthetic_run_trains_with_afd(afd_run):
    import json

    history = json.loads((afd_run / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2]
    assert history[0]["train_reg"] > 0  # the target moved away from its start during epoch 1
    from xviz.checkpoint import read_checkpoint

    data = read_checkpoint(afd_run)
    assert data["arch"] == "afs_resnet18" and data["arch_options"] == {"ratio": 0.5}
    assert data["config"]["reg"] == "afd"
    assert all(np.isfinite(row["test_loss"]) for row in history)
    training = torch.load(afd_run / "checkpoints" / "epoch-0002.pt", weights_only=True)["training"]
    assert any(k.startswith("attention.") for k in training["regularizer"])


def test_afs_report_and_update_on_the_run(afd_run, run_cli, tmp_path):
    code, out, err = run_cli("afs-report", "--checkpoint", afd_run, "--limit", "8", "--out", tmp_path / "report")
    assert code == 0, err
    assert "fewer MACs" in out
    for name in ("channel_importance.png", "kept_fraction.png", "top_channels.png"):
        with Image.open(tmp_path / "report" / name) as im:
            assert im.format == "PNG" and im.width > 200
    rows = (tmp_path / "report" / "channels.csv").read_text().splitlines()
    assert rows[0].startswith("layer,channel,importance") and len(rows) == 1 + 4 * (64 + 128 + 256 + 512)
    masked = tmp_path / "masked.pt"
    code, out, err = run_cli("afs-update", "--checkpoint", afd_run, "--limit", "8", "--thres-m", "1e9",
                             "--out", masked)
    assert code == 0, err
    assert "skipped: all channels masked" in out
    from xviz.models import load_model

    loaded = load_model(checkpoint=masked)
    assert all(g.m.sum() == 0 for g in gates(loaded.module).values())
    code, _, err = run_cli("afs-report", "--checkpoint", "plugins/xviz_zoo/assets/xviz-demo.pt", "--out", tmp_path / "x")
    assert code == 2 and "no AFS gates" in err


def test_training_rejects_unknown_regularisers_and_bad_ratios(run_cli, tmp_path):
    code, _, err = run_cli("train", "--model", "afs_resnet18", "--reg", "l3", "--dataset-options", "size=8",
                           "--epochs", "1", "--out", tmp_path / "a")
    assert code == 2 and "unknown regulariser `l3`" in err
    code, _, err = run_cli("train", "--model", "afs_resnet18", "--model-options", "ratio=1.5",
                           "--dataset-options", "size=8", "--epochs", "1", "--out", tmp_path / "b")
    assert code == 2 and "must be in (0, 1]" in err


def gated_outputs_by_hand(model, x):
    """``{conv name: gated BatchNorm output}`` computed apart from the gate's code: hooks clone the conv's
    input and the BatchNorm output before the gate scales it; the gate formula is applied here."""
    inputs, raw, handles = {}, {}, []
    for conv_name, conv, _, bn in conv_bn_pairs(model):
        handles.append(conv.register_forward_pre_hook(lambda m, a, n=conv_name: inputs.__setitem__(n, a[0].clone())))
        handles.append(bn.register_forward_hook(lambda m, a, o, n=conv_name: raw.__setitem__(n, o.clone()),
                                                prepend=True))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    out = {}
    for name, gate in gates(model).items():
        w, b = gate.predictor.weight.detach(), gate.predictor.bias.detach()
        h = torch.relu(inputs[name].mean(dim=(2, 3)) @ w.T + b)
        keep = torch.zeros_like(h).scatter_(1, h.topk(max(1, round(gate.ratio * h.shape[1])), dim=1).indices, 1.0)
        scale = gate.m * keep * (gate.s * h + (1 - gate.s) * gate.gamma.detach())
        out[name] = (raw[name] * scale[:, :, None, None], h, scale)
    return out


def masked_gated_resnet():
    """A gated one-block-per-stage ResNet (d = 0.5) whose ``layer4.0.conv2`` has every channel masked (m = 0)
    and whose ``layer2.0.conv2`` / ``layer3.0.conv2`` have every other channel static (s = 0, gamma in use)."""
    model = add_gates(tiny_resnet(classes=6, seed=3), 0.5)
    found = gates(model)
    torch.manual_seed(4)
    with torch.no_grad():
        for gate in found.values():  # importances that differ between channels and images
            gate.predictor.weight.normal_(0.0, 0.5)
        found["layer4.0.conv2"].m.zero_()
        for name in ("layer2.0.conv2", "layer3.0.conv2"):
            found[name].s[::2] = 0.0
            found[name].gamma.uniform_(0.5, 1.5)
    return model.eval()


def test_afs_channels_and_top_channels_draw_the_gated_output_computed_independently():
    from xviz.explainer import explain_tensors

    from xviz_afs.report import top_channels

    model = masked_gated_resnet()
    x = x_batch(2, 64)
    want = gated_outputs_by_hand(model, x)
    out = explain_tensors(model, x, ["afs-channels"], topk=2, pm=get_plugin_manager(entrypoints=False))
    assert [e.layer for e in out] == stage_last_convs(model) == [f"layer{i}.0.conv2" for i in (1, 2, 3, 4)]
    for e in out:
        fired = torch.relu(want[e.layer][0]).sum(1).numpy()
        assert np.allclose(e.raw[:, 0], fired, atol=1e-5) and np.allclose(e.raw[:, 1], fired, atol=1e-5), e.layer
    masked = next(e for e in out if e.layer == "layer4.0.conv2")
    assert not masked.raw.any()  # every channel masked: exactly zero
    # what the map used to show instead: the block output (shortcut included, after its in-place ReLU)
    block = {}
    handle = model.layer4[0].register_forward_hook(lambda m, a, o: block.__setitem__("out", o.clone()))
    with torch.no_grad():
        model(x)
    handle.remove()
    assert block["out"].sum(1).max() > 0.1

    with torch.no_grad(), recording(model) as records:
        model(x)
    for layer in ("layer2.0.conv2", "layer3.0.conv2"):  # static channels among the top ones
        gated, h, scale = want[layer]
        assert torch.allclose(records[layer]["output"], gated, atol=1e-5)
        chosen = top_channels(records, layer, top=6)
        reaching = (scale[0] != 0).nonzero().flatten()
        expected = reaching[h[0, reaching].argsort(descending=True)][:6].tolist()
        assert [c for c, _, _ in chosen] == expected
        assert any(model.get_submodule(layer.replace("conv", "bn")).afs.s[c] == 0 for c in expected)
        for c, importance, fired in chosen:
            assert importance == pytest.approx(float(h[0, c]), rel=1e-5)
            assert torch.allclose(fired, torch.relu(gated[0, c]), atol=1e-5)
    assert top_channels(records, "layer4.0.conv2") == []  # nothing of a masked layer reaches the output


def test_gate_records_are_copies_the_block_cannot_change():
    model = add_gates(tiny_resnet(), 0.5).eval()
    x = x_batch(2, 32)
    want = gated_outputs_by_hand(model, x)
    with torch.no_grad(), recording(model) as records:
        model(x)
    for name, (gated, h, scale) in want.items():  # conv2 of a BasicBlock: ``out += identity`` follows in place
        assert torch.allclose(records[name]["output"], gated, atol=1e-5), name
        assert torch.allclose(records[name]["importance"], h, atol=1e-5)
        assert torch.allclose(records[name]["scale"], scale, atol=1e-6)
    with torch.no_grad(), recording(model, outputs=False) as records:
        model(x)
    assert all("output" not in r and "keep" in r for r in records.values())
