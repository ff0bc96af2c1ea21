"""Class activation maps (``xviz_cam.methods``): the declarations xviz lists without importing torch."""

from xviz import hookimpl
from xviz.specs import MethodSpec, attributes_of


@hookimpl
def xviz_register_methods():
    return [
        MethodSpec("gradcam", "xviz_cam.methods:GradCAM",
                   "Grad-CAM: channels weighted by their mean gradient (Selvaraju et al. 2017)"),
        MethodSpec("gradcampp", "xviz_cam.methods:GradCAMPlusPlus",
                   "Grad-CAM++: pixel-weighted positive gradients (Chattopadhay et al. 2018)"),
        MethodSpec("xgradcam", "xviz_cam.methods:XGradCAM",
                   "XGrad-CAM: gradients weighted by normalised activations (Fu et al. 2020)"),
        MethodSpec("hirescam", "xviz_cam.methods:HiResCAM",
                   "HiResCAM: element-wise gradient x activation, summed over channels (Draelos & Carin 2020)"),
        MethodSpec("layercam", "xviz_cam.methods:LayerCAM",
                   "LayerCAM: positive gradients weight each location (Jiang et al. 2021)"),
        MethodSpec("eigencam", "xviz_cam.methods:EigenCAM",
                   "Eigen-CAM: first principal component of the activations, gradient-free (Muhammad & Yeasin 2020)"),
        MethodSpec("scorecam", "xviz_cam.methods:ScoreCAM",
                   "Score-CAM: channels weighted by the score of the input masked by them (Wang et al. 2020)"),
    ]


__getattr__ = attributes_of("xviz_cam.methods")  # xviz_cam.ScoreCAM(batch_size=8): imported on use
