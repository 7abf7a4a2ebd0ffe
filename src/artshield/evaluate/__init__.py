"""Evaluation: image metrics (PSNR, SSIM, LPIPS when its weights exist), the demo world's style metric,
statistics (ROC AUC, bootstrap intervals) and purification attacks (JPEG, resize, noise, noisy upscaling,
DiffPure/GrIDPure, IMPRESS). Submodules import lazily, e.g. ``from artshield.evaluate.purify import ...``."""
