"""The networks and their files: architecture from weight shapes, the ViT, checkpoint import
(DDA, Community Forensics), the manifest and model directory, the hub, labels, the combiner of
several detectors, and random checkpoints for tests. Imports engine.process and engine.imaging."""
