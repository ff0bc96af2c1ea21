"""The original Class Activation Mapping (CAM) as an xviz plugin.

xviz imports this module whenever it starts, even for ``xviz --help``: it only declares the method.
The method itself (``xviz_cam_original.cam``, which imports torch) is imported when it is used.
"""

import xviz


@xviz.hookimpl
def xviz_register_methods():
    return [xviz.MethodSpec("cam", "xviz_cam_original.cam:CAM",
                            "CAM: channels weighted by the classifier of a GAP + linear head (Zhou et al. 2016)")]
