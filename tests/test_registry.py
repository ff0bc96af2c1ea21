"""The plugin system: built-ins, inline plugins, name clashes, hook validation, hook order, and
third-party plugins found through real ``xviz`` entry points (a dist-info folder on sys.path)."""

import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pluggy
import pytest
import torch
from torch import nn

import xviz
from xviz import registry
from xviz.errors import XvizError
from xviz.explainer import explain_tensors, resolve_layer
from xviz.methods import Method, method
from xviz.registry import get_plugin_manager

SAMPLES = Path(__file__).resolve().parents[1] / "plugins" / "xviz_zoo" / "assets" / "samples"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("XVIZ_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("XVIZ_DISABLE_PLUGIN_AUTOLOAD", raising=False)


def tiny_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3)).eval()


def batch(n=2, size=12, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


class ChannelSum(Method):
    """The target layer's activation summed over channels (a Method subclass)."""

    name = "channelsum"
    summary = "sum of the layer's channels"

    def compute(self, ctx):
        return ctx.activations.sum(1, keepdim=True).expand(-1, ctx.targets.shape[1], -1, -1)


@method("inputabs", uses_layer=False)
def input_abs(ctx):
    """Absolute input, summed over colours (made with the decorator)."""
    return ctx.inputs.abs().sum(1, keepdim=True)


@method("gradxact")
def grad_times_activation(ctx):
    """Gradient times activation at the target layer."""
    return (ctx.gradients * ctx.activations[:, None]).sum(2)


class Inline:
    @xviz.hookimpl
    def xviz_register_methods(self):
        return [ChannelSum(), input_abs, grad_times_activation]


class Claims:
    def __init__(self, *names):
        self.names = names

    @xviz.hookimpl
    def xviz_register_methods(self):
        return [method(n)(lambda ctx: ctx.activations[:, :1]) for n in self.names]


# --- built-ins and inline plugins ----------------------------------------------------------------

def test_builtins_are_registered(monkeypatch):
    monkeypatch.setenv("XVIZ_DISABLE_PLUGIN_AUTOLOAD", "1")
    pm = get_plugin_manager()
    for name in ("xviz_zoo", "xviz_cam"):
        assert pm.has_plugin(name)
        assert pm.infos[name].source == "built-in"
        assert pm.infos[name].version == xviz.__version__
    assert {"gradcam", "gradcampp"} <= set(registry.methods(pm))
    assert "xviz-demo" in registry.models(pm)
    assert "synthetic" in registry.datasets(pm)


def test_without_builtins_nothing_is_registered():
    pm = get_plugin_manager(builtins=False, entrypoints=False)
    assert registry.methods(pm) == {}
    assert pm.infos == {}


def test_inline_plugin_methods_are_listed(pm):
    before = set(registry.methods(pm))
    pm.register(Inline(), name="inline")
    found = registry.methods(pm)
    assert set(found) == before | {"channelsum", "inputabs", "gradxact"}
    assert isinstance(found["channelsum"], ChannelSum)
    assert isinstance(found["inputabs"], Method)
    assert found["inputabs"].summary == "Absolute input, summed over colours (made with the decorator)."
    assert found["inputabs"].uses_layer is False


def test_method_subclass_end_to_end(pm):
    pm.register(Inline(), name="inline")
    model, x = tiny_cnn(), batch()
    [exp] = explain_tensors(model, x, ["channelsum"], pm=pm)
    assert exp.method == "channelsum"
    assert exp.layer == "1"  # the ReLU: the last layer with a spatial output
    assert exp.maps.shape == (2, 1, 12, 12)
    assert exp.maps.min() >= 0.0 and exp.maps.max() <= 1.0
    with torch.no_grad():
        expected = model[1](model[0](x)).sum(1, keepdim=True)
    np.testing.assert_allclose(exp.raw, expected.numpy(), rtol=1e-5, atol=1e-6)
    for i in range(2):  # min-max normalised per map; same resolution, so no resampling
        e = expected[i, 0].numpy()
        np.testing.assert_allclose(exp.maps[i, 0], (e - e.min()) / (e.max() - e.min()), atol=1e-5)


def test_decorated_methods_end_to_end(pm):
    pm.register(Inline(), name="inline")
    model, x = tiny_cnn(), batch(n=3)
    inputabs, gradxact = explain_tensors(model, x, ["inputabs", "gradxact"], pm=pm)
    assert inputabs.layer is None and gradxact.layer == "1"
    for exp in (inputabs, gradxact):
        assert exp.maps.shape == (3, 1, 12, 12)
        assert exp.maps.min() >= 0.0 and exp.maps.max() <= 1.0
    np.testing.assert_allclose(inputabs.raw, x.abs().sum(1, keepdim=True).numpy(), rtol=1e-6)

    # gradient x activation by hand: d score / d relu-output for the top class
    xx = x.clone()
    act = model[1](model[0](xx))
    logits = model[4](model[3](model[2](act)))
    top = logits.argmax(1)
    assert np.array_equal(gradxact.targets[:, 0], top.numpy())
    (grad,) = torch.autograd.grad(logits.gather(1, top[:, None]).sum(), act)
    np.testing.assert_allclose(gradxact.raw[:, 0], (grad * act).sum(1).detach().numpy(), rtol=1e-4, atol=1e-7)


def test_method_instance_works_without_registration(pm):
    [exp] = explain_tensors(tiny_cnn(), batch(), [ChannelSum()], pm=pm)
    assert exp.method == "channelsum" and exp.maps.shape == (2, 1, 12, 12)


# --- name clashes and validation -----------------------------------------------------------------

def test_two_plugins_claiming_one_method_name(pm):
    pm.register(Claims("dup", "only-a"), name="plugin-a")
    pm.register(Claims("dup"), name="plugin-b")
    with pytest.raises(XvizError) as info:
        registry.method("dup", pm)  # an error where the name is used ...
    message = str(info.value)
    assert "`dup`" in message
    assert "plugin-a" in message and "plugin-b" in message
    assert registry.method("only-a", pm).name == "only-a"  # ... and only there
    found = registry.methods(pm)
    assert "dup" not in found and found.clashes == {"dup": ["plugin-a", "plugin-b"]}
    [exp] = explain_tensors(tiny_cnn(), batch(), ["only-a"], pm=pm)
    assert exp.method == "only-a"


def test_plugin_claiming_a_builtin_name(pm):
    pm.register(Claims("gradcam"), name="copycat")
    with pytest.raises(XvizError) as info:
        explain_tensors(tiny_cnn(), batch(), ["gradcam"], pm=pm)
    assert "xviz_cam" in str(info.value) and "copycat" in str(info.value)
    [exp] = explain_tensors(tiny_cnn(), batch(), ["gradcampp"], pm=pm)  # the other methods keep working
    assert exp.maps.shape == (2, 1, 12, 12)


def test_clashing_method_name_in_the_cli(pm, monkeypatch, tmp_path):
    from xviz.testing import XvizRunner

    runner = XvizRunner()
    runner.register(Claims("gradcam"), name="copycat")
    listed = runner.run("methods")
    assert listed.code == 0 and "gradcampp" in listed.out and not re.search(r"^gradcam ", listed.out, re.M)
    assert listed.err.startswith("xviz: warning: method `gradcam` is registered by both plugin `xviz_cam` and plugin "
                                 "`copycat`") and len(listed.err.splitlines()) == 1
    winged = SAMPLES / "winged.png"
    used = runner.run("explain", "--model", "xviz-demo", "--method", "gradcam", "--out", tmp_path, winged)
    assert used.code == 2 and used.err.startswith("xviz: error: method `gradcam` is registered by both")
    other = runner.run("explain", "--model", "xviz-demo", "--method", "layercam", "--out", tmp_path, winged)
    assert other.code == 0, other.err


def test_misspelled_hook_is_rejected(pm):
    class Typo:
        @xviz.hookimpl
        def xviz_register_method(self):  # missing the final "s"
            return [ChannelSum()]

    pm.register(Typo(), name="typo")
    with pytest.raises(pluggy.PluginValidationError, match="xviz_register_method"):
        pm.check_pending()


def test_hook_with_unknown_argument_is_rejected(pm):
    class BadArgs:
        @xviz.hookimpl
        def xviz_default_target_layer(self, model, name):  # the spec says model_name
            return None

    with pytest.raises(pluggy.PluginValidationError):
        pm.register(BadArgs(), name="badargs")


# --- hook order ----------------------------------------------------------------------------------

def test_third_party_default_layer_wins_over_builtin(pm):
    model = tiny_cnn()
    assert pm.hook.xviz_default_target_layer(model=model, model_name="resnet50") == "layer4"  # built-in

    class Mine:
        @xviz.hookimpl
        def xviz_default_target_layer(self, model, model_name):
            return "0" if model_name in ("resnet50", None) else None

    pm.register(Mine(), name="mine")
    assert pm.hook.xviz_default_target_layer(model=model, model_name="resnet50") == "0"
    # returning None lets the built-in decide
    assert pm.hook.xviz_default_target_layer(model=model, model_name="vgg16") == "features.29"
    # and explain uses it for a bare module instead of the last spatial layer ("1")
    assert resolve_layer(model, None, batch(), None, pm) == ("0", "plugin")
    [exp] = explain_tensors(model, batch(), ["gradcam"], pm=pm)
    assert exp.layer == "0"


def test_without_plugin_bare_module_uses_last_spatial_layer(pm):
    assert resolve_layer(tiny_cnn(), None, batch(), None, pm) == ("1", "last spatial")


# --- real entry points ---------------------------------------------------------------------------

PLUGIN_SOURCE = textwrap.dedent('''
    import xviz
    from xviz.methods import method


    @method("testmethod", "a method from an installed test plugin")
    def _testmethod(ctx):
        return ctx.activations.sum(1, keepdim=True).expand(-1, ctx.targets.shape[1], -1, -1)


    @xviz.hookimpl
    def xviz_register_methods():
        return [_testmethod]
''')


def install_plugin(root, *, module, source, entry_name, dist_name, version):
    """Lay out an installed distribution: a module and its dist-info with an ``xviz`` entry point."""
    (root / f"{module}.py").write_text(source)
    info = root / f"{dist_name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist_name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[xviz]\n{entry_name} = {module}\n")


@pytest.fixture
def testplug(tmp_path, monkeypatch):
    install_plugin(tmp_path, module="xviz_testplug", source=PLUGIN_SOURCE, entry_name="testplug",
                   dist_name="xviz-testplug", version="0.3")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "xviz_testplug" not in sys.modules
    yield tmp_path
    sys.modules.pop("xviz_testplug", None)


@pytest.fixture
def brokenplug(tmp_path, monkeypatch):
    install_plugin(tmp_path, module="xviz_brokenplug", source="raise RuntimeError('boom at import')\n",
                   entry_name="brokenplug", dist_name="xviz-brokenplug", version="1.0")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("xviz_brokenplug", None)


def test_entry_point_plugin_is_loaded(testplug):
    pm = get_plugin_manager()
    assert pm.has_plugin("testplug")
    info = pm.infos["testplug"]
    assert info.name == "testplug"
    assert info.source == "entry point of xviz-testplug"
    assert info.version == "0.3"
    assert pm.infos["xviz_cam"].source == "built-in"
    methods = registry.methods(pm)
    assert "testmethod" in methods and "gradcam" in methods
    assert methods["testmethod"].summary == "a method from an installed test plugin"
    [exp] = explain_tensors(tiny_cnn(), batch(), ["testmethod"], pm=pm)
    assert exp.maps.shape == (2, 1, 12, 12)


def test_entry_points_not_loaded_when_asked_not_to(testplug):
    pm = get_plugin_manager(entrypoints=False)
    assert not pm.has_plugin("testplug") and "testmethod" not in registry.methods(pm)


def test_disable_autoload(testplug, monkeypatch):
    monkeypatch.setenv("XVIZ_DISABLE_PLUGIN_AUTOLOAD", "1")
    pm = get_plugin_manager()
    assert not pm.has_plugin("testplug")
    assert "testplug" not in pm.infos
    assert "testmethod" not in registry.methods(pm)
    assert pm.has_plugin("xviz_cam")  # built-ins always load


def test_disable_autoload_still_loads_named_plugins(testplug, monkeypatch):
    monkeypatch.setenv("XVIZ_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("XVIZ_LOAD_PLUGINS", "testplug")
    assert get_plugin_manager().has_plugin("testplug")


def test_load_plugins_empty_loads_none(testplug, monkeypatch):
    monkeypatch.setenv("XVIZ_LOAD_PLUGINS", "")
    pm = get_plugin_manager()
    assert not pm.has_plugin("testplug")
    assert "testmethod" not in registry.methods(pm)
    assert {"xviz_zoo", "xviz_cam"} <= set(pm.infos)


@pytest.mark.parametrize("value", ["testplug", " testplug , ", "testplug,testplug"])
def test_load_plugins_named(testplug, monkeypatch, value):
    monkeypatch.setenv("XVIZ_LOAD_PLUGINS", value)
    pm = get_plugin_manager()
    assert pm.infos["testplug"].source == "entry point of xviz-testplug"
    assert "testmethod" in registry.methods(pm)


def test_load_plugins_unknown_name(testplug, monkeypatch):
    monkeypatch.setenv("XVIZ_LOAD_PLUGINS", "testplug,nope")
    with pytest.warns(registry.PluginWarning) as caught:
        pm = get_plugin_manager()
    [message] = [str(w.message) for w in caught]
    assert "`nope`" in message
    assert "testplug" in message  # the installed ones are listed
    assert pm.has_plugin("testplug")  # the one that exists still loads


def test_plugin_failing_at_import(brokenplug, testplug):
    with pytest.warns(registry.PluginWarning) as caught:
        pm = get_plugin_manager()
    [message] = [str(w.message) for w in caught]
    assert "plugin `brokenplug` (from xviz-brokenplug) failed to load (RuntimeError: boom at import)" in message
    assert "pip uninstall xviz-brokenplug" in message
    others = sorted(set(pm.infos) - {n for n, i in pm.infos.items() if i.source == "built-in"})
    assert f"XVIZ_LOAD_PLUGINS={','.join(others)}" in message and "testplug" in others  # just skip it
    assert not pm.has_plugin("brokenplug") and "brokenplug" in pm.skipped
    assert "testmethod" in registry.methods(pm) and "gradcam" in registry.methods(pm)  # the others keep working


def test_broken_plugin_skipped_when_not_selected(brokenplug, monkeypatch):
    monkeypatch.setenv("XVIZ_LOAD_PLUGINS", "")
    assert not get_plugin_manager().has_plugin("brokenplug")


def test_cli_lists_entry_point_plugin(testplug, capsys):
    from xviz.cli import main

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    [line] = [line for line in out.splitlines() if line.split()[:1] == ["testmethod"]]
    assert "testplug" in line and "a method from an installed test plugin" in line
    assert "gradcam" in out

    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    [line] = [line for line in out.splitlines() if line.split()[:1] == ["testplug"]]
    assert "entry point of xviz-testplug" in line
    assert line.split()[-1] == "0.3"
    assert any(line.split()[:2] == ["xviz_cam", "built-in"] for line in out.splitlines())


def test_cli_reports_plugin_problems_in_one_line(testplug, monkeypatch, capsys):
    from xviz.cli import main

    monkeypatch.setenv("XVIZ_LOAD_PLUGINS", "nope")
    assert main(["methods"]) == 0
    out, err = capsys.readouterr()
    assert err.startswith("xviz: warning: XVIZ_LOAD_PLUGINS names `nope`") and len(err.strip().splitlines()) == 1
    assert "gradcam" in out and "testmethod" not in out


def test_broken_plugin_leaves_the_rest_working(brokenplug, testplug, capsys):
    from xviz.cli import main

    assert main(["--version"]) == 0  # needs no plugin at all
    assert capsys.readouterr() == (f"xviz {xviz.__version__}\n", "")
    for args in (["--help"], ["plugins"], ["methods"]):
        try:
            code = main(args)
        except SystemExit as exc:  # --help
            code = exc.code
        out, err = capsys.readouterr()
        assert code == 0 and "Traceback" not in err
        assert err.splitlines() == [err.splitlines()[0]] and err.startswith("xviz: warning: plugin `brokenplug`")
        assert "XVIZ_LOAD_PLUGINS=testplug" in err
        if args == ["plugins"]:
            assert re.search(r"^brokenplug +skipped: failed to load", out, re.M)
            assert re.search(r"^testplug +entry point of xviz-testplug", out, re.M)
    assert "testmethod" in out  # the output of `methods`: the working plugin's method is there


def test_plugin_whose_hook_raises_is_skipped(pm):
    from xviz.testing import XvizRunner

    class Raises:
        @xviz.hookimpl
        def xviz_register_methods(self):
            raise ImportError("no module named 'missing_dependency'")

        @xviz.hookimpl
        def xviz_register_commands(self, subparsers):
            raise ImportError("no module named 'missing_dependency'")

    runner = XvizRunner()
    runner.register(Raises(), name="raises")
    result = runner.run("methods")
    assert result.code == 0 and "gradcam" in result.out
    assert [line.split(" failed")[0] for line in result.err.splitlines()] == ["xviz: warning: plugin `raises`"] * 2


def test_two_plugins_adding_one_command(monkeypatch):
    from xviz.testing import XvizRunner

    class Hello:
        def __init__(self, word):
            self.word = word

        @xviz.hookimpl
        def xviz_register_commands(self, subparsers):
            subparsers.add_parser("hello").set_defaults(func=lambda args: print(self.word))

    runner = XvizRunner()
    runner.register(Hello("first"), name="one")
    runner.register(Hello("second"), name="two")
    result = runner.run("hello")
    assert result.code == 2
    assert result.err == ("xviz: error: command `hello` is registered by both plugin `one` and plugin `two`: "
                          "uninstall one, or choose plugins with XVIZ_LOAD_PLUGINS\n")
    assert runner.run("methods").code == 0  # the other commands keep working


@pytest.mark.parametrize("source, fragment", [
    ("import xviz\n@xviz.hookimpl\ndef xviz_register_method():\n    return []\n", "xviz_register_method"),
    ("import xviz\n@xviz.hookimpl\ndef xviz_default_target_layer(model, name):\n    return None\n", "name"),
])
def test_invalid_entry_point_plugin_is_one_line(tmp_path, monkeypatch, capsys, source, fragment):
    from xviz.cli import main

    install_plugin(tmp_path, module="xviz_badplug", source=source, entry_name="badplug",
                   dist_name="xviz-badplug", version="0.1")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert main(["methods"]) == 0
    finally:
        sys.modules.pop("xviz_badplug", None)
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("xviz: warning: plugin `badplug` (from xviz-badplug) is invalid") and fragment in err
    assert "XVIZ_LOAD_PLUGINS=" in err and "gradcam" in out
