"""Gradient leakage: what a curious server can reconstruct from its clients' updates."""
