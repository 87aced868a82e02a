"""What DDA_DELIVERY=exactly_once costs against at_least_once, side by side in one run (issue 22).

One worker process per mode, the zero-cost model stub (the delivery is what is measured), an
in-memory cache, distinct generated JPEGs (every request a miss), noida-db (whose read_committed
readers are faithful; tansu's see aborted records) and an HTTP origin on 127.0.0.1. Per mode:
  1. flood: N requests at once; verdicts/s from the first produce to the last verdict read, and
     CPU ms per verdict over the worker's processes (worker + decode, /proc utime+stime);
  2. slow: requests paced at --rate/s where 1 in 20 URLs answers after 3 s; latency p50/p99 from
     the produce call to the verdict being read by a read_committed subscriber. In exactly_once
     a verdict behind a slow fetch in its partition waits for it: this phase shows that price.
noida-db answers a consumer's fetch at once instead of waiting for records, so an idle consumer
polls without pause: the CPU figures include that, in both modes alike.

    python benchmarks/exactly_once.py [--partitions 4] [--max-in-flight 256] [--rate 40] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import describe  # noqa: E402
from pipeline_rate import STUB, cpu_phase, process_classes, run_phase  # noqa: E402

from engine.model.checkpoint import import_checkpoint  # noqa: E402
from engine.model.synthetic import tiny_architecture, write_official_checkpoint  # noqa: E402
from tests.http_server import LocalServer, Route  # noqa: E402
from tests.images import encode, scene  # noqa: E402
from tests.services import NoidaBroker, Worker, unique  # noqa: E402

MODES = ("at_least_once", "exactly_once")
SLOW_EVERY = 20
SLOW_S = 3.0


def measure(mode: str, model: Path, broker: NoidaBroker, server: LocalServer, count: int, args: argparse.Namespace,
            tmp: Path) -> dict[str, object]:
    topics = {"input": unique("req"), "output": unique("out"), "dlq": unique("dlq")}
    broker.create_topics({topics["input"]: args.partitions, topics["output"]: 1, topics["dlq"]: 1})
    env = {"DDA_DELIVERY": mode, "DDA_INSTANCE_ID": f"bench-{mode}", "DDA_BENCH_STUB": "1", "DDA_DECODE_WORKERS": "1",
           "DDA_FETCH_WORKERS": "32", "DDA_LOG_LEVEL": "warning", "DDA_MAX_IN_FLIGHT": str(args.max_in_flight),
           "PYTHONPATH": os.pathsep.join([STUB, str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    worker = Worker(model, broker, topics, unique("bench"), tmp / f"{mode}.log", **env)
    worker.start()
    try:
        worker.wait_ready(120)
        reader = broker.reader(topics["output"], fetch_max_wait_ms=10, isolation_level="read_committed")
        urls = [f"{server.base}/{mode}/{i}" for i in range(count)]
        run_phase(broker, topics["input"], reader, urls[: args.warmup], "warm", None)
        assert worker.proc is not None
        pids = process_classes(worker.proc.pid)
        flood_urls = urls[args.warmup : args.warmup + args.requests]
        flood, per_class = cpu_phase(pids, lambda: run_phase(broker, topics["input"], reader, flood_urls, "flood", None))
        slow_urls = [url.replace(f"/{mode}/", f"/{mode}-slow/") if i % SLOW_EVERY == SLOW_EVERY - 1 else url
                     for i, url in enumerate(urls[args.warmup + args.requests :])]
        slow = run_phase(broker, topics["input"], reader, slow_urls, "slow", args.rate)
        transactions = worker.metric("dda_transactions_total", 'outcome="committed"')
        status = worker.terminate(60)
        return {"mode": mode, "flood": flood, "slow": slow, "exit": status, "transactions": transactions,
                "cpu_ms_per_verdict": sum(per_class.values()) / int(flood["verdicts"])}  # type: ignore[call-overload]
    finally:
        worker.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=600, help="flood requests per mode")
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--slow-requests", type=int, default=400, help="requests of the slow-fetch phase")
    parser.add_argument("--rate", type=float, default=40.0, help="requests/s of the slow-fetch phase")
    parser.add_argument("--partitions", type=int, default=4, help="input partitions")
    parser.add_argument("--max-in-flight", type=int, default=256, help="DDA_MAX_IN_FLIGHT (exactly_once holds finished records in it until their transaction)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    count = args.warmup + args.requests + args.slow_requests
    with tempfile.TemporaryDirectory() as tmp_name, LocalServer() as server:
        tmp = Path(tmp_name)
        model = tmp / "stub"
        import_checkpoint(write_official_checkpoint(tmp / "stub.pth", tiny_architecture()), model)
        for mode in MODES:  # distinct bytes per mode: nothing is shared through the origin
            for i in range(count):
                body = encode(scene(320, 240, seed=10_000 * MODES.index(mode) + i), "JPEG", quality=85)
                server.routes[f"/{mode}/{i}"] = Route(body=body)
                server.routes[f"/{mode}-slow/{i}"] = Route(body=body, delay_s=SLOW_S)
        broker = NoidaBroker()
        broker.start()
        try:
            results = [measure(mode, model, broker, server, count, args, tmp) for mode in MODES]
        finally:
            broker.stop()
    machine = describe()
    setup = (f"one worker process, zero-cost model stub, in-memory cache, noida-db, {args.partitions} input partitions, "
             f"DDA_MAX_IN_FLIGHT {args.max_in_flight}; flood: "
             f"{args.requests} distinct 320x240 JPEGs at once; slow: {args.slow_requests} requests at {args.rate:g}/s, 1 in "
             f"{SLOW_EVERY} fetched in {SLOW_S:g} s; latency read by a read_committed subscriber")
    print(f"machine: {json.dumps(machine)}\nsetup: {setup}")
    print(f"{'mode':<15} {'flood verdicts/s':>17} {'CPU ms/verdict':>15} {'slow p50 ms':>12} {'slow p99 ms':>12} {'exit':>5}")
    for r in results:
        flood, slow = r["flood"], r["slow"]
        print(f"{r['mode']:<15} {flood['rate']:>17.1f} {r['cpu_ms_per_verdict']:>15.2f} {slow['p50']:>12.0f} {slow['p99']:>12.0f} "  # type: ignore[index]
              f"{r['exit']!s:>5}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "setup": setup, "results": results}, indent=2))


if __name__ == "__main__":
    main()
