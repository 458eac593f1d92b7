"""The training and evaluation protocol: trainer, datasets, transforms, built-in synthetic depth
data, metrics and figures. Sits above the models, the formats, the factory and the inference
protocol (`reference/protocol/`: sliding window, image reading, synthetic seg images)."""
