"""The streaming moderation worker. Root modules: the contracts its packages share (`config`,
`messages`, `metrics`, `errors`, `supervision`, `endpoints`) and the two that assemble the rest
(`service`: one worker process; `pod`: consumer processes around one engine process).
Packages by role: `fetch` (URLs to bytes, the egress rule), `decode` (decode processes),
`cache` (verdicts, stores, the near-duplicate index), `provenance`, `pipeline` (a request to
its verdict), `consume` (transports, delivery, commits). tests/test_layering.py enforces which
may import which."""
