"""Memorization in text-to-image diffusion models: detect it, locate it in the UNet, prune it, and re-check.

Four pieces, each usable alone and all driven by :mod:`artshield.finetune.memorization_cli`. The package is
split by job: :mod:`.sampling` (DDIM sampling and shared checks), :mod:`.near_duplicates` (descriptors and the
training-image index), :mod:`.detection`, :mod:`.location` (hooks, WANDA masks, zeroing), :mod:`.checkpoint`
(the atomic writer), :mod:`.evaluation` (utility, CLIP score, re-check) and :mod:`.pruning` (the whole
``prune`` run); everything public is importable from here.

**Detection** (Wen et al., "Detecting, Explaining, and Mitigating Memorization in Diffusion Models",
ICLR 2024, ``YuxinWenRick/diffusion_memorization``). While sampling with DDIM and classifier-free guidance,
the magnitude of the text-conditional noise prediction ``||eps(x_t, c) - eps(x_t, "")||_2`` (per image,
over the whole latent) is recorded at every step; its mean over the first ``steps`` steps and over several
seeds is the prompt's score, high for memorized prompts. As in the reference, the latents follow the
guided trajectory and the unconditional branch is the empty prompt; the defaults (50 DDIM steps, guidance
7.5, four seeds) are the reference's. Deviations: the score is converted to epsilon units for
v-prediction and sample-prediction checkpoints (the reference only handles epsilon models); a threshold
can be calibrated from prompts known not to be memorized (the reference reports AUC only). The score is a
raw L2 norm over the latent, so it grows with resolution: compare prompts at one resolution.

**Near-duplicate search** of generations against a folder of training images, as a replication check
(Somepalli et al. CVPR 2023; Carlini et al. 2023). With an SSCD TorchScript file
(``sscd_disc_large.torchscript.pt``, Pizzi et al. 2022) descriptors are computed as DCR/ConceptPrune do
(resize 256, centre-crop 224, normalise to [-1, 1]) and "replicated" means cosine > 0.5. Without it a
weight-free descriptor is used (:class:`DCTDescriptor`: the low-frequency 2-D DCT of a 32x32 thumbnail);
it finds exact and lightly degraded copies, not crops or flips, and its threshold is our own heuristic.

**Location and pruning** (Chavhan et al., "Memorized Images in Diffusion Models share a Subspace that can
be Located and Deleted", arXiv 2406.18566, via the authors' ConceptPrune code
``ruchikachavhan/concept-prune``). Forward pre-hooks record the inputs of the second FFN linear
(``ff.net.2``) of every ``BasicTransformerBlock`` (options: ``ff.net.0.proj``, cross-attention
``attn2.to_k`` / ``attn2.to_v``) during the first ``tau`` denoising steps of generations for the memorized
prompts (target) and for a base prompt (default ``""``). Every activation row (token) is L2-normalised;
per step and layer the per-input-feature L2 norm ``||X_j||`` of those rows gives the WANDA score
``|W_ij| * ||X_j||`` (Sun et al. 2023). For each output row the top ``ratio`` (default 1%) weights by
target score are kept where the target score exceeds the base score; the union over the first ``tau``
(default 10) steps is zeroed (``weight *= 1 - mask``), and the edited model is saved as a static diffusers
checkpoint with the masks. Deviation: ``||X_j||`` is divided by sqrt(number of rows) (an RMS, as WANDA's
own ``scaler_row`` averages), so target and base sets of different sizes are comparable; ConceptPrune
pairs one base run with every target prompt and so compares raw norms of equal row counts, which gives
the same masks when the counts match. Like ConceptPrune, both halves of the classifier-free-guidance batch
are recorded by default (``include_unconditional``).

**Re-check** (Finding Dori, arXiv 2507.16880: after pruning, small perturbations of the text embedding can
re-trigger replication). The memorization metrics are measured again with each prompt's token embeddings
perturbed by random directions of a few relative magnitudes. Deviation: Finding Dori *optimises* the
perturbation; random directions are a cheaper and weaker probe, so a clean re-check is not a proof of
robustness.

Utility before and after pruning is measured on other prompts: on the demo world with its style metric
(:class:`artshield.models.demo.style.StyleMetric`) when the prompts are world captions; on any model by how
close the pruned model's generations stay to the original's at the same seeds (SSIM, PSNR, LPIPS when its
weights exist), by the strength of text conditioning on those prompts, and by CLIP score when open_clip
weights are given (loaded by :func:`artshield.models.clip.load_clip`).
"""

from __future__ import annotations

from ...models.demo.world import parse_world_caption  # kept importable from here; lives with the demo world
from .checkpoint import (
    MASK_STATS_FILE,
    MASKS_FILE,
    REPORT_FILE,
    check_checkpoint_output,
    save_pruned_checkpoint,
)
from .detection import PromptScore, calibrate_threshold, detect, score_prompts
from .evaluation import (
    DEFAULT_PERTURBATIONS,
    GENERIC_UTILITY_PROMPTS,
    ClipScorer,
    Evaluation,
    default_utility_prompts,
    evaluate_model,
    perturb_embedding,
    robustness_check,
)
from .location import (
    LAYER_CHOICES,
    MASKS_FORMAT,
    ActivationRecorder,
    MemorizationMasks,
    apply_masks,
    check_location_args,
    find_target_layers,
    locate_memorization,
    wanda_select,
)
from .near_duplicates import (
    DCT_REPLICATION_THRESHOLD,
    SSCD_REPLICATION_THRESHOLD,
    DCTDescriptor,
    Descriptor,
    Match,
    NearDuplicateIndex,
    SSCDDescriptor,
    load_descriptor,
)
from .pruning import PruneResult, prune
from .sampling import (
    SamplerConfig,
    SampleResult,
    check_prompts,
    check_seeds,
    check_text_to_image,
    epsilon_difference,
    expand_prompts,
    sample,
)

__all__ = [
    "DCT_REPLICATION_THRESHOLD",
    "DEFAULT_PERTURBATIONS",
    "GENERIC_UTILITY_PROMPTS",
    "LAYER_CHOICES",
    "MASKS_FILE",
    "MASKS_FORMAT",
    "MASK_STATS_FILE",
    "REPORT_FILE",
    "SSCD_REPLICATION_THRESHOLD",
    "ActivationRecorder",
    "ClipScorer",
    "DCTDescriptor",
    "Descriptor",
    "Evaluation",
    "Match",
    "MemorizationMasks",
    "NearDuplicateIndex",
    "PromptScore",
    "PruneResult",
    "SSCDDescriptor",
    "SampleResult",
    "SamplerConfig",
    "apply_masks",
    "calibrate_threshold",
    "check_checkpoint_output",
    "check_location_args",
    "check_prompts",
    "check_seeds",
    "check_text_to_image",
    "default_utility_prompts",
    "detect",
    "epsilon_difference",
    "evaluate_model",
    "expand_prompts",
    "find_target_layers",
    "load_descriptor",
    "locate_memorization",
    "parse_world_caption",
    "perturb_embedding",
    "prune",
    "robustness_check",
    "sample",
    "save_pruned_checkpoint",
    "score_prompts",
    "wanda_select",
]
