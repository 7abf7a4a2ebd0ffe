"""Evaluation: the mimicry-vs-protection harness (``artshield evaluate``: :mod:`.harness`, :mod:`.mimicry`,
:mod:`.report`), purification attacks (JPEG, resize, noise, noisy upscaling, DiffPure/GrIDPure, IMPRESS),
image metrics (PSNR, SSIM; LPIPS and CLIP score when their weights exist), KID/FD in an offline feature
space, the demo world's style metric and statistics (ROC AUC, bootstrap intervals). Submodules import
lazily, e.g. ``from artshield.evaluate.harness import evaluate``."""
