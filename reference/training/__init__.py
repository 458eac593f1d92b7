"""The training and evaluation protocol: trainer, datasets, transforms, built-in synthetic data,
metrics, the official sliding-window inference and figures. Sits above the models, the formats
and the factory."""
