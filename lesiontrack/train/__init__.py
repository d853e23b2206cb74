"""Self-supervised pretraining: paired patches, negative sampling, multi-scale InfoNCE, the loop."""
