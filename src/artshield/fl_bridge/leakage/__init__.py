"""Gradient leakage: what a curious federated server learns from its clients' updates."""
