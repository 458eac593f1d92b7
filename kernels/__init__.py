"""Triton kernels of the performance core, each beside its plain-PyTorch reference and registered
as a `torch.library` custom op (namespace `dinov3_deploy`). Import the modules directly
(`dinov3_deploy.kernels.fused_attention`, ...): importing this package loads nothing, so
`reference` and the CLI never pay for triton unless a kernel is asked for."""
