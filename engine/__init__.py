"""The DDA detector: network, checkpoint import, preprocessing and runners."""
