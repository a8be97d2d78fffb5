"""U-Net-family segmentation networks for 2D and 3D (MONAI layer factories, one code path per architecture).

Entry point::

    from monai_ext.networks import build_network
    net = build_network("unet", 2, 1, 2, features=(16, 32, 64, 128), norm="batch")

Registered names: ``unet`` (Ronneberger 2015), ``unetpp`` (UNet++, Zhou 2018, with pruned inference),
``unet3p`` (UNet 3+, Huang 2020, full-scale skips + CGM), ``res_unet``, ``mobile_unet``, ``eff_unet``.
Common options: ``features``, ``norm`` (``batch``/``instance``/``group``/None), ``act``, ``dropout``,
``deep_supervision``, ``cgm`` (+ ``cgm_gate``, ``cgm_gate_threshold``, ``cgm_dropout``), ``aux_resolution``,
``strides`` / ``kernel_sizes`` (per-level, per-axis downsampling and conv kernels for anisotropic voxels, see
:mod:`monai_ext.networks.topology`; :func:`network_topology_lengths` says how many each network takes);
see each class for its own. :func:`check_network_config` checks settings against a network's constraints
without building it (config schemas call it before any work starts).

What ``forward`` returns (eval: one logits tensor; training with deep supervision/CGM: a
:class:`NetworkOutput`) is defined once in :mod:`monai_ext.networks.outputs`, and so is what the CGM's
class logits mean: :func:`cgm_probability`, which the CGM loss and every gate and filter use.
"""

from .base import NetworkConfigError
from .outputs import NetworkOutput, cgm_presence_logit, cgm_probability, main_logits
from .registry import (
    NETWORKS,
    available_networks,
    build_network,
    check_network_config,
    network_options,
    network_topology_lengths,
)
from .unet import valid_unet_input_size, valid_unet_output_size

__all__ = [
    "NETWORKS",
    "NetworkConfigError",
    "NetworkOutput",
    "available_networks",
    "build_network",
    "cgm_presence_logit",
    "cgm_probability",
    "check_network_config",
    "main_logits",
    "network_options",
    "network_topology_lengths",
    "valid_unet_input_size",
    "valid_unet_output_size",
]
