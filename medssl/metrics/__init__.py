"""Evaluation metrics: segmentation (Dice, HD95, NSD), detection (IoU, mAP, FROC) and
classification (accuracy, macro AUROC, macro F1).

numpy, torch and MONAI's metric functions; never lightning or an I/O library (import contract
in pyproject.toml). Used by the fine-tuning tasks' validation (and so by ``medssl bench``).
"""
