"""`topk=K` (`--topk K`) explains each of an image's K classes exactly as K single-target runs naming
those classes would: for every registered method with its registered settings, built-in and installed
third-party plugins alike, noise methods included."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xviz import registry
from xviz.errors import XvizError
from xviz.explainer import explain_tensors

TOPK = 3
SAMPLE = "plugins/xviz_zoo/assets/samples/winged.png"


def registered_methods() -> list[str]:
    """Every method of the plugin manager the command line uses (entry points included)."""
    return sorted(registry.methods(registry.get_plugin_manager()))


@pytest.fixture(scope="module")
def setting():
    """The demo model with every installed plugin, and a sample image shrunk to 16 x 16 (keeps the
    methods that run hundreds of passes per target, such as integrated-gradients-smooth, fast)."""
    from xviz.images import read_image
    from xviz.models import load_model

    pm = registry.get_plugin_manager()
    demo = load_model("xviz-demo", pm=pm)
    x = demo.preprocessing.tensor(read_image(SAMPLE))[None]
    return demo, F.interpolate(x, size=(16, 16), mode="area"), pm


@pytest.mark.parametrize("name", registered_methods())
def test_topk_maps_equal_single_target_runs_of_the_named_classes(setting, name):
    demo, x, pm = setting
    method = registry.methods(pm)[name]
    try:
        method.check(demo.module, pm)
    except XvizError as exc:
        pytest.skip(f"`{name}` does not apply to the demo model: {exc}")
    together = explain_tensors(demo, x, [name], topk=TOPK, pm=pm)
    assert together and all(e.raw.shape[:2] == (1, TOPK) for e in together)
    names = together[0].target_names[0]
    assert len(set(names)) == TOPK
    for k, target in enumerate(names):
        single = explain_tensors(demo, x, [name], target=target, pm=pm)
        for alone, batched in zip(single, together, strict=True):  # one per layer for layered methods
            assert alone.target_names == ((target,),) and alone.layer == batched.layer
            scale = np.abs(alone.raw).max()
            assert scale > 0, f"`{name}`: an empty map for `{target}` proves nothing"
            np.testing.assert_allclose(batched.raw[0, k], alone.raw[0, 0], rtol=1e-4, atol=1e-5 * scale,
                                       err_msg=f"`{name}` explains `{target}` differently with topk={TOPK}")
