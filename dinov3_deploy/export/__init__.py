"""Export: the ONNX graph of a `dinov3_deploy.deploy_module.DeployModule` (`onnx_graph`), the
Triton repository (`triton_repo`) and the pipeline that writes a verified artifact (`pipeline`).
Importing the package imports none of them."""
