"""Evaluation of frozen encoders: k-NN, linear probes, label propagation."""
