"""Malicious-client behaviours: model poisoning on update vectors and training-time attacks (see :mod:`.base`)."""
