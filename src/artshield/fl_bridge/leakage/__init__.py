"""Gradient leakage in federated learning: what a curious server reconstructs from client updates."""
