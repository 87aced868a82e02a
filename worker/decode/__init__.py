"""Decode processes: the supervised pool, the child process and the CPU work per image it runs
(decode, crops, PDQ, provenance). Imports engine.imaging, engine.process, worker.provenance and the
worker's root modules; never torch (a decode process must not load it)."""
