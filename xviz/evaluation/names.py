"""The evaluation's vocabulary: metric, baseline and column names (light: the command's flags use them)."""

from xviz.errors import XvizError

METRICS = ("deletion", "insertion", "drop", "pointing", "sanity")
BASELINES = ("blur", "mean", "black", "zero")
RANDOM = "random"

# column -> (heading, True when higher is better); the table, CSV and chart follow this order
COLUMNS = {
    "ins_minus_del": ("ins-del", True),
    "deletion": ("deletion AUC", False),
    "insertion": ("insertion AUC", True),
    "average_drop": ("avg drop %", False),
    "increase": ("increase %", True),
    "pointing_object": ("pointing object", True),
    "energy_object": ("energy object", True),
    "pointing_part": ("pointing part", True),
    "energy_part": ("energy part", True),
    "pointing_box": ("pointing box", True),
    "energy_box": ("energy box", True),
    "sanity_spearman": ("rand. spearman", False),
    "sanity_ssim": ("rand. SSIM", False),
}


def check_metric_names(metrics) -> None:
    """An error for the first name that is not a metric."""
    for m in metrics or ():
        if m not in METRICS:
            raise XvizError(f"unknown metric `{m}`: choose from {', '.join(METRICS)}")
