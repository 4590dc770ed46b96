"""Fine-tuning LightningModules: segmentation, detection and diagnosis heads on a pretrained encoder.

``medssl finetune`` (:mod:`cli`) runs them through the shared LightningCLI; :mod:`layer_decay`
gives freezing and layer-wise learning-rate decay by encoder depth.
"""
