"""Integrations with training frameworks: `batchscale.integrations.lightning` (PyTorch
Lightning, the optional extra `batchscale[lightning]`)."""
