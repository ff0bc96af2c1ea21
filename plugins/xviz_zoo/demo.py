"""The bundled demo model (:class:`xviz_zoo.demo_cnn.DemoCNN` trained on the synthetic part dataset):
where its weights and sample images lie, and its preprocessing.

Reproduce the shipped checkpoint with::

    xviz train --recipe xviz-demo --out runs/xviz-demo
    cp runs/xviz-demo/last.pt plugins/xviz_zoo/assets/xviz-demo.pt
"""

from pathlib import Path

from xviz.images import Preprocessing

ASSETS = Path(__file__).parent / "assets"
CHECKPOINT = ASSETS / "xviz-demo.pt"
SAMPLES = ASSETS / "samples"
PREPROCESSING = Preprocessing(resize=64, crop=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))

