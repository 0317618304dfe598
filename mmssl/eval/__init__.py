"""Evaluation of frozen encoders: k-NN, linear probes, label propagation.

knn (weighted k-NN), linear (probe on cached features), encoders (checkpoint loading, dense adapters),
propagation (the algorithm), presets (CRW / DINO / SiamMAE settings), labels (pixels <-> feature grid),
datasets (DAVIS / JHMDB / VIP readers), matfile (MAT v5 reader), metrics (J, F, PCK, mIoU),
outputs (PNGs, CSVs, overlays), evaluate (one task over its sequences).
"""
