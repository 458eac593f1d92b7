"""Checkpoint formats: reading official / Hugging Face / timm / our safetensors state dicts,
detecting their layout and converting between layouts. Knows configs, not modules."""
