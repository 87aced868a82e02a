"""A request to its verdict: the pipeline's stages, the micro-batch window, one Completion per
request, the fair fetch queue, supervised stage threads, the shadow model and the ensemble.
Imports engine, worker.fetch.client, worker.decode, worker.cache.verdicts and the worker's root modules."""
