"""What a file says about its own origin, read beside the pixels and reported beside the verdict.

`report.read_provenance` runs in the decode processes on the bytes already fetched:
`containers` finds the metadata, `c2pa_manifest`, `xmp`, `exif` and `generators` read it,
`source_types` holds the IPTC vocabulary, and `policy` decides whether a declaration may
move a verdict's label (only ever towards "ai_generated").
"""
