"""From model directory to GPU artefact: ONNX export, TensorRT build, verification against the
fp32 torch model. Imports the engine packages below it (process, imaging, model, runners)."""
