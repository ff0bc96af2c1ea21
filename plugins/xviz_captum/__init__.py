"""Input attributions through captum (``xviz_captum.methods``): the declarations xviz lists without
importing torch or captum."""

from xviz import hookimpl
from xviz.specs import MethodSpec, attributes_of


@hookimpl
def xviz_register_methods():
    return [
        MethodSpec("integrated-gradients", "xviz_captum.methods:IntegratedGradients",
                   "Integrated Gradients: path integral of input gradients from a zero baseline "
                   "(Sundararajan et al. 2017)"),
        MethodSpec("saliency", "xviz_captum.methods:Saliency",
                   "Saliency: largest absolute input gradient over the colour channels (Simonyan et al. 2014)"),
        MethodSpec("guided-backprop", "xviz_captum.methods:GuidedBackprop",
                   "Guided Backprop: input gradients passing only positive gradients through ReLUs "
                   "(Springenberg et al. 2015)"),
        MethodSpec("guided-gradcam", "xviz_captum.methods:GuidedGradCAM",
                   "Guided Grad-CAM: guided backprop masked by the upsampled Grad-CAM of the target layer "
                   "(Selvaraju et al. 2017)"),
        MethodSpec("occlusion", "xviz_captum.methods:Occlusion",
                   "Occlusion: score drop when a sliding patch is replaced by the baseline (Zeiler & Fergus 2014)"),
        MethodSpec("smoothgrad", "xviz_captum.methods:SmoothGrad",
                   "SmoothGrad: saliency averaged over noisy copies of the image (Smilkov et al. 2017)"),
        MethodSpec("integrated-gradients-smooth", "xviz_captum.methods:SmoothIntegratedGradients",
                   "SmoothGrad of Integrated Gradients: IG averaged over noisy copies of the image "
                   "(Smilkov et al. 2017)"),
    ]


__getattr__ = attributes_of("xviz_captum.methods")  # xviz_captum.IntegratedGradients(n_steps=100): imported on use
