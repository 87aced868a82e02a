"""The bottom layer: the detectors and everything that runs them, importing nothing of worker,
training or dda. Packages by role, each importing only those before it in this list:
`process` (logs, dying with the parent, bounded blocking calls), `imaging` (bytes to pixels,
preprocessing), `model` (networks, checkpoints, manifests, the combiner), `runners` (the Runner
contract, torch, ONNX, TensorRT), then `compile` (ONNX export, TensorRT build) and `serving`
(a pod's engine process, its wire and client). tests/test_layering.py enforces it."""
