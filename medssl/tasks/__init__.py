"""Fine-tuning LightningModules: segmentation, detection and diagnosis heads on a pretrained encoder."""
