"""Differentiable multi-scale SSIM (Wang, Simoncelli & Bovik, 2003) for 2D and 3D tensors.

MONAI only ships MS-SSIM as a metric (no gradients through its reduction), and the PyTorch code used
by the UNet 3+ reference combines the scales wrongly (it multiplies the last scale's SSIM into every
factor of the product). Here the index follows the paper,

    MS-SSIM = l_M^{a_M} * prod_{j=1..M} cs_j^{b_j},   a_M = b_M = gamma_M,

i.e. ``ssim_M^{gamma_M} * prod_{j<M} cs_j^{gamma_j}`` with ``ssim_M = l_M cs_M`` and the standard
weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333). Each ``cs_j``/``ssim_M`` is the spatial mean of its
map (as in the reference MATLAB/TensorFlow code). ``cs``/``ssim`` are clamped to a small positive
value before the fractional powers, since they can be negative for anti-correlated inputs and a
negative base would give NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "MS_SSIM_WEIGHTS",
    "MSSSIMLoss",
    "gaussian_kernel_1d",
    "ms_ssim",
    "ms_ssim_plan",
    "ssim_components",
]

MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def gaussian_kernel_1d(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Normalised 1D Gaussian window of odd ``size``; applied once per axis (separable)."""
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def _blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Depthwise 'valid' Gaussian filtering along every spatial axis of ``[B, C, *spatial]``."""
    nd = x.ndim - 2
    conv = getattr(F, f"conv{nd}d")
    channels = x.shape[1]
    for axis in range(nd):
        shape = [1, 1] + [1] * nd
        shape[2 + axis] = kernel.numel()
        weight = kernel.reshape(shape).expand(channels, *shape[1:])
        x = conv(x, weight, groups=channels)
    return x


def ssim_components(
    x: torch.Tensor, y: torch.Tensor, kernel: torch.Tensor, data_range: float, k: tuple[float, float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spatial means of the SSIM map and of the contrast-structure map, each ``[B, C]``."""
    c1 = (k[0] * data_range) ** 2
    c2 = (k[1] * data_range) ** 2
    mu_x, mu_y = _blur(x, kernel), _blur(y, kernel)
    sxx = _blur(x * x, kernel) - mu_x * mu_x
    syy = _blur(y * y, kernel) - mu_y * mu_y
    sxy = _blur(x * y, kernel) - mu_x * mu_y
    cs_map = (2 * sxy + c2) / (sxx + syy + c2)
    lum_map = (2 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
    return (lum_map * cs_map).flatten(2).mean(-1), cs_map.flatten(2).mean(-1)


def ms_ssim_plan(
    spatial_shape: Sequence[int],
    win_size: int = 11,
    win_sigma: float = 1.5,
    weights: Sequence[float] = MS_SSIM_WEIGHTS,
) -> tuple[int, float, tuple[float, ...]]:
    """Choose ``(window size, window sigma, per-scale weights)`` that fit ``spatial_shape``.

    Each scale halves the image and the valid convolution needs the window to fit, so small patches
    get fewer scales (weights of the kept scales renormalised to sum to 1; with all scales the
    published weights are used unchanged). If even one scale does not
    fit, the window shrinks to the largest odd size that does, sigma scaled proportionally.
    """
    smallest = min(int(s) for s in spatial_shape)
    if smallest < 1:
        raise ValueError(f"empty spatial shape {tuple(spatial_shape)}")
    if smallest < win_size:
        new_size = smallest if smallest % 2 == 1 else smallest - 1
        new_size = max(new_size, 1)
        win_sigma = win_sigma * new_size / win_size
        win_size = new_size
    scales = 1
    while scales < len(weights) and smallest // (2**scales) >= win_size:
        scales += 1
    if scales == len(weights):  # all scales fit: the published weights as they are (sum 1.0001)
        return win_size, float(win_sigma), tuple(float(w) for w in weights)
    kept = [float(w) for w in weights[:scales]]
    return win_size, float(win_sigma), tuple(w / sum(kept) for w in kept)


def ms_ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    win_size: int = 11,
    win_sigma: float = 1.5,
    weights: Sequence[float] = MS_SSIM_WEIGHTS,
    k: tuple[float, float] = (0.01, 0.03),
    eps: float = 1e-6,
) -> torch.Tensor:
    """MS-SSIM per sample and channel, ``[B, C]``, of ``[B, C, *spatial]`` tensors (2D or 3D)."""
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.ndim not in (4, 5):
        raise ValueError(f"expected [B, C, H, W] or [B, C, D, H, W], got {tuple(x.shape)}")
    win_size, win_sigma, gammas = ms_ssim_plan(x.shape[2:], win_size, win_sigma, weights)
    kernel = gaussian_kernel_1d(win_size, win_sigma, x.dtype, x.device)
    pool = getattr(F, f"avg_pool{x.ndim - 2}d")
    result = torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)
    for j, gamma in enumerate(gammas):
        ssim_j, cs_j = ssim_components(x, y, kernel, data_range, k)
        last = j == len(gammas) - 1
        base = ssim_j if last else cs_j
        result = result * base.clamp_min(eps) ** gamma
        if not last:
            x, y = pool(x, kernel_size=2, stride=2), pool(y, kernel_size=2, stride=2)
    return result


class MSSSIMLoss(nn.Module):
    """``1 - MS-SSIM`` between softmax probabilities and the one-hot target, averaged over classes.

    MS-SSIM rewards matching local structure at several scales, which UNet 3+ uses to sharpen
    boundaries. By default only foreground classes (1..C-1) are compared: background is the
    complement for C = 2 and would only duplicate the signal.
    """

    def __init__(
        self,
        include_background: bool = False,
        win_size: int = 11,
        win_sigma: float = 1.5,
        weights: Sequence[float] = MS_SSIM_WEIGHTS,
    ) -> None:
        super().__init__()
        self.include_background = include_background
        self.win_size, self.win_sigma, self.weights = win_size, win_sigma, tuple(weights)

    def forward(self, probs: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        """``probs`` and ``onehot`` are ``[B, C, *spatial]`` in [0, 1]."""
        if not self.include_background:
            probs, onehot = probs[:, 1:], onehot[:, 1:]
        score = ms_ssim(probs, onehot, 1.0, self.win_size, self.win_sigma, self.weights)
        return 1.0 - score.mean()
