"""The Python API as a user calls it: xviz.load_model, xviz.explain, Explanation.save."""

import numpy as np
from PIL import Image

import xviz
import xviz.explainer  # importing the module must not shadow the function xviz.explain
from xviz.data.synthetic import sample


def test_explain_files_in_batches_equals_one_batch(tmp_path, demo):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(sample(i, "test").image).save(paths[-1])
    assert callable(xviz.explain)
    one = xviz.explain(demo, paths, methods=["gradcam", "gradcampp"], topk=2)
    split = xviz.explain(demo, paths, methods=["gradcam", "gradcampp"], topk=2, batch_size=2)
    for a, b in zip(one, split):
        assert a.method == b.method and a.maps.shape == (3, 2, 64, 64)
        np.testing.assert_allclose(a.maps, b.maps, atol=1e-6)
        assert a.inputs == b.inputs == tuple(str(p) for p in paths)
        assert a.target_names == b.target_names and len(a.target_names[0]) == 2
        assert a.versions["xviz"] == xviz.__version__ and "torch" in a.versions
    assert one[0].layer == "features"


def test_explanation_save_writes_pngs_and_npy(tmp_path, demo):
    path = tmp_path / "creature.png"
    Image.fromarray(sample(4, "test").image).save(path)
    (exp,) = xviz.explain(demo, [path], methods=["gradcampp"])
    written = exp.save(tmp_path / "out")
    assert [p.name for p in written] == ["creature_gradcampp.png", "gradcampp.npy"]
    with Image.open(written[0]) as im:
        assert im.format == "PNG" and im.size == (64, 64) and im.mode == "RGB"
    np.testing.assert_array_equal(np.load(written[1]), exp.maps)
    assert exp.maps.min() == 0.0 and exp.maps.max() == 1.0
