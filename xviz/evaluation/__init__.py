"""How faithful each explanation method is to the model, in numbers (``xviz evaluate``).

For every image the model's predicted class is explained (one shared :func:`explain_tensors`
pass per batch for all methods) and each method's input-size map ``M`` (``Explanation.maps``;
for signed methods only its positive part counts as evidence) is scored by:

* **deletion / insertion AUC** (Petsiuk et al., RISE, BMVC 2018): the pixels are ranked by ``M``
  (ties in random order, seeded); at ``s = 0 .. steps`` the top ``s / steps`` of them are replaced
  by the baseline (deletion) or copied onto the baseline (insertion), and the softmax probability
  ``p_s`` of the explained class is read. ``AUC = sum_s (p_s + p_{s+1}) / (2 * steps)`` (trapezoid
  on the fraction axis [0, 1]). Deletion: lower is better; insertion: higher is better.
* **average drop / increase in confidence** (Chattopadhay et al., Grad-CAM++, WACV 2018): with
  ``Y`` the probability on the image and ``O`` the one on the image multiplied by ``M`` (pixel
  values, so ``M = 0`` is black), ``drop = 100 * mean(max(0, Y - O) / Y)`` (lower is better) and
  ``increase = 100 * mean(O > Y)`` (higher is better).
* **pointing game** (Zhang et al., ECCV 2016): a hit when the map's maximum lies inside the region
  (no tolerance); **energy-based pointing game** (Wang et al., Score-CAM, CVPRW 2020):
  ``sum(M+ * region) / sum(M+)``. Regions are the synthetic dataset's ``object`` and ``part``
  masks, or CUB's bounding ``box``; a blank map scores 0.
* **model-randomisation sanity check** (Adebayo et al., NeurIPS 2018): the top ``randomize``
  weight layers (convolutions and linear layers, counted from the output; for ``xviz-demo``
  ``classifier``, ``features.17``, ``features.14``: the classifier and the two convolutions of the last block) are
  re-initialised with their own ``reset_parameters`` (seeded), the same images are explained for
  the same classes, and the original and randomised maps are compared: Spearman rank correlation
  (of ``|M|`` for signed methods) and SSIM. A method whose mean rank correlation stays at or above
  ``flag_above`` (0.5) is **flagged**: its maps do not depend on what the model learnt.

The ``random`` reference row is a map of uniform noise (a function of the image alone): what
chance scores, and a method the sanity check must flag.
"""

from xviz.specs import attributes_of

_HOME = {
    **dict.fromkeys(["ImageFolder", "RandomMap", "applicable_methods", "check_metrics", "evaluate", "load_data",
                     "region_kinds", "regions_of"], "xviz.evaluation.driver"),
    **dict.fromkeys(["auc", "average_drop_increase", "class_probability", "energy_pointing", "make_baseline",
                     "mask_by_map", "perturbation_curves", "pixel_ranks", "pointing_game", "randomized_copy",
                     "scoring_model", "spearman", "ssim"], "xviz.evaluation.metrics"),
    **dict.fromkeys(["MethodScores", "Results"], "xviz.evaluation.results"),
    **dict.fromkeys(["Mistake", "find_mistakes"], "xviz.evaluation.mistakes"),
    **dict.fromkeys(["BASELINES", "COLUMNS", "METRICS", "RANDOM"], "xviz.evaluation.names"),
}
__getattr__ = attributes_of(_HOME)  # imported on first use: the command's flags need only the names

__all__ = sorted(_HOME)
