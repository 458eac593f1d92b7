"""The models: pure `nn.Module` code (ViT, ConvNeXt, their layers, task heads, DPT, the task
model) and the random initialisations. Imports no checkpoint or training code."""
