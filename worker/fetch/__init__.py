"""Image bytes from untrusted URLs and local paths: the HTTP client and the egress (SSRF) rule of
which addresses a fetch may reach. Imports engine.process and the worker's root modules."""
