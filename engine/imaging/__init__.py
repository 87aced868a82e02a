"""Untrusted bytes to pixels and pixels to model input: the decoders (Pillow behind an allow-list,
the libjpeg-turbo extension), PNG chunk walking, PDQ, each detector's preprocessing, and the
stable codes of why bytes could not become pixels. Imports engine.process only; never torch."""
