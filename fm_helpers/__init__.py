"""fm_helpers: the code of the course "Flow Matching in JAX", one module per chapter idea.

====================  ================================================  ===========
module                what it holds                                     chapter
====================  ================================================  ===========
:mod:`.data`          an image as a density; loading images safely      2
:mod:`.model`         the velocity network (Flax NNX)                   3
:mod:`.loss`          the conditional OT path and the FM loss           4
:mod:`.train`         Optax training fused with ``lax.scan``            5
:mod:`.couplings`     pairing noise and data: minibatch OT, reflow      8
:mod:`.meanflow`      average velocity; few-step maps and density       9
:mod:`.guidance`      labelled data, class-conditional flows, CFG       10
:mod:`.images`        digits, dequantisation, bits per dimension        11
:mod:`.unet`          a convolutional U-Net velocity field              11
:mod:`.parallel`      meshes, sharded arrays, per-device couplings      12
:mod:`.sample`        ODE solvers and the NFE count                     6
:mod:`.density`       exact and Hutchinson log-likelihood               7
:mod:`.metrics`       energy distance, NLL, KL gap, straightness        6, 7, 8
:mod:`.baselines`     Gaussian and KDE log-likelihood baselines         7
:mod:`.gaussian`      the Gaussian flow known in closed form            1, 7
:mod:`.results`       the published benchmark results                   5, 7, 8
:mod:`.plot`          figures and the animation                         all
====================  ================================================  ===========
"""

from importlib.metadata import PackageNotFoundError, version

from . import (baselines, couplings, data, density, gaussian, guidance, images, loss, meanflow,
               metrics, model, parallel, plot, results, sample, train, unet)
from .data import ImageDensity, ImageLoadError, load_image, pixel_points, split
from .density import log_prob
from .loss import cond_ot_path, flow_matching_loss
from .metrics import energy_distance, kl_gap
from .model import VelocityMLP
from .sample import sample as sample_flow
from .train import fit

try:
    __version__ = version("fm_helpers")  # the one number, in pyproject.toml
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "unknown"
