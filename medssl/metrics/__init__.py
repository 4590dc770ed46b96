"""Evaluation metrics: segmentation (Dice, HD95, NSD) and detection (mAP, FROC), pure numpy/torch/MONAI."""
