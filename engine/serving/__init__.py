"""The engine process of a pod: its server, the wire format, and the client Runner a worker
process scores through. Imports the engine packages below it (process, imaging, model, runners)."""
