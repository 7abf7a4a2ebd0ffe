"""Evaluation: the mimicry-vs-protection harness (``artshield evaluate``: :mod:`.harness`, its inputs
:mod:`.image_sets`, :mod:`.mimicry`, :mod:`.report`), purification attacks (``artshield purify``:
:mod:`.purify`, the public face of :mod:`.purify_base`, :mod:`.purify_image`, :mod:`.purify_model`,
:mod:`.purify_spec`, :mod:`.purify_runner`, :mod:`.purify_cli`), CLIP score when its weights exist, and KID/FD
in an offline feature space. Submodules import lazily, e.g. ``from artshield.evaluate.harness import evaluate``."""
