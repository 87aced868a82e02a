"""Running a model: the Runner contract, the torch, ONNX and TensorRT runners, the engine files
build and run both read, the choice of backend, and the Detector (images in, verdicts out).
Imports engine.process, engine.imaging and engine.model."""
