"""fm_helpers: the code of the course "Flow Matching in JAX", one module per chapter idea.

====================  ================================================  =========
module                what it holds                                     chapter
====================  ================================================  =========
:mod:`.data`          an image as a density; loading images safely      2
:mod:`.model`         the velocity network                              3
:mod:`.loss`          the conditional OT path and the FM loss           4
:mod:`.train`         Optax training fused with ``lax.scan``            5
:mod:`.sample`        ODE solvers and the NFE count                     6
:mod:`.density`       exact and Hutchinson log-likelihood               7
:mod:`.metrics`       energy distance, NLL, KL gap                      6, 7
:mod:`.baselines`     Gaussian and KDE log-likelihood baselines         7
:mod:`.plot`          figures and the animation                         all
====================  ================================================  =========
"""

from . import baselines, data, density, loss, metrics, model, plot, sample, train
from .data import ImageDensity, ImageLoadError, load_image, pixel_points, split
from .density import log_prob
from .loss import cond_ot_path, flow_matching_loss
from .metrics import energy_distance, kl_gap
from .model import GaussianFourierProjection, VelocityUNet, velocity_fn
from .sample import SampleResult, sample as sample_flow
from .train import fit

__version__ = "0.1.0"

__all__ = [
    "baselines", "data", "density", "loss", "metrics", "model", "plot", "sample", "train",
    "ImageDensity", "ImageLoadError", "load_image", "pixel_points", "split",
    "log_prob", "cond_ot_path", "flow_matching_loss", "energy_distance", "kl_gap",
    "GaussianFourierProjection", "VelocityUNet", "velocity_fn", "SampleResult", "sample_flow", "fit",
]
