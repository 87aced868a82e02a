"""Messages in and verdicts out: the transport contract, the Kafka and stdin transports, the
delivery loop (publish, commit the acknowledged prefix, rebalances, shutdown), the ledger and
exactly-once transactions. Imports engine, worker.pipeline.pipeline (completions) and the worker's root modules."""
