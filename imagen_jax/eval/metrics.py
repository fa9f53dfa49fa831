"""Image metrics (PSNR, SSIM) and the Fréchet distance between Gaussians, in numpy (float64).

Images are NHWC (or a single HWC image), float in [-1, 1] — the project's convention, hence
`data_range=2.0` — or uint8 with `data_range=255.0`. Both metrics are computed per image and then
averaged over the batch.

SSIM follows Wang et al. 2004 ("Image quality assessment: from error visibility to structural
similarity"): an 11×11 Gaussian window with σ = 1.5, K1 = 0.01, K2 = 0.03, population (not sample)
statistics, the SSIM map over the positions where the window fits in the image ("valid"), averaged
over positions and channels. This equals `skimage.metrics.structural_similarity(a, b,
gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=…, channel_axis=-1)`.

The Fréchet distance between N(μ1, Σ1) and N(μ2, Σ2) is ‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2(Σ1Σ2)^½);
Tr((Σ1Σ2)^½) = Tr((Σ1^½ Σ2 Σ1^½)^½), a symmetric positive semi-definite matrix, so two `eigh`
suffice (no scipy, no complex parts to discard).
"""

from __future__ import annotations

import numpy as np

SSIM_SIGMA = 1.5
SSIM_WINDOW = 11
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _batch(images: np.ndarray) -> np.ndarray:
  """NHWC float64 (a single HWC image gets a batch axis)."""
  x = np.asarray(images, dtype=np.float64)
  if x.ndim == 3:
    x = x[None]
  if x.ndim != 4:
    raise ValueError(f"expected NHWC or HWC images, got shape {np.shape(images)}")
  return x


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  a, b = _batch(a), _batch(b)
  if a.shape != b.shape:
    raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
  return a, b


def psnr_per_image(a: np.ndarray, b: np.ndarray, data_range: float = 2.0) -> np.ndarray:
  """(N,) peak signal-to-noise ratio in dB, 10·log10(data_range² / MSE); inf where equal."""
  a, b = _pair(a, b)
  mse = np.mean((a - b) ** 2, axis=(1, 2, 3))
  with np.errstate(divide="ignore"):
    return 10.0 * np.log10(data_range**2 / mse)


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 2.0) -> float:
  """Mean over images of the PSNR (dB); inf if some pair is identical."""
  return float(np.mean(psnr_per_image(a, b, data_range)))


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
  """The normalised 1-D Gaussian of the separable SSIM window."""
  x = np.arange(size, dtype=np.float64) - (size - 1) / 2
  w = np.exp(-0.5 * (x / sigma) ** 2)
  return w / w.sum()


def _filter_valid(x: np.ndarray, window: np.ndarray) -> np.ndarray:
  """NHWC → N(H−k+1)(W−k+1)C: separable correlation with `window` on H and W, valid positions."""
  k = len(window)
  rows = np.lib.stride_tricks.sliding_window_view(x, k, axis=1) @ window
  return np.lib.stride_tricks.sliding_window_view(rows, k, axis=2) @ window


def ssim_per_image(a: np.ndarray, b: np.ndarray, data_range: float = 2.0) -> np.ndarray:
  """(N,) mean SSIM of each image pair (over valid window positions and channels)."""
  a, b = _pair(a, b)
  if min(a.shape[1:3]) < SSIM_WINDOW:
    raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW} px, got {a.shape[1:3]}")
  w = gaussian_window()
  mu_a, mu_b = _filter_valid(a, w), _filter_valid(b, w)
  var_a = _filter_valid(a * a, w) - mu_a**2
  var_b = _filter_valid(b * b, w) - mu_b**2
  cov = _filter_valid(a * b, w) - mu_a * mu_b
  c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
  ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)
              / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)))
  return ssim_map.mean(axis=(1, 2, 3))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 2.0) -> float:
  """Mean over images of the Gaussian-window SSIM (Wang et al. 2004); 1 for identical images."""
  return float(np.mean(ssim_per_image(a, b, data_range)))


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(mean (D,), covariance (D, D)) of (N, D) features; the covariance is the unbiased one
  (N − 1 in the denominator), as in the reference FID code."""
  f = np.asarray(features, dtype=np.float64)
  if f.ndim != 2 or f.shape[0] < 2:
    raise ValueError(f"need (N >= 2, D) features, got shape {f.shape}")
  return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def _psd_sqrt(m: np.ndarray) -> np.ndarray:
  """The symmetric square root of a symmetric positive semi-definite matrix."""
  vals, vecs = np.linalg.eigh((m + m.T) / 2)
  return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """Tr((Σ1 Σ2)^½) for covariance matrices, via Tr((Σ1^½ Σ2 Σ1^½)^½)."""
  s1 = _psd_sqrt(np.asarray(sigma1, dtype=np.float64))
  inner = s1 @ np.asarray(sigma2, dtype=np.float64) @ s1
  vals = np.linalg.eigvalsh((inner + inner.T) / 2)
  return float(np.sqrt(np.clip(vals, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
  """The Fréchet (2-Wasserstein²) distance between N(mu1, sigma1) and N(mu2, sigma2)."""
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
    raise ValueError(f"shapes do not match: mu {mu1.shape}, {mu2.shape}; sigma {sigma1.shape}, "
                     f"{sigma2.shape}")
  diff = mu1 - mu2
  value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2)
  return float(max(value, 0.0))
