"""Where a pod's CPU goes under a flood of cache misses: py-spy samples one consumer process (only
while it holds the GIL: its Python work) and one decode process, and the samples are grouped by
the stage thread they ran in (consumer) or by the function (decode).

Same setup as benchmarks/pipeline_rate.py (tansu, redis-server, nginx, zero-cost model stub, 2
consumers, 2 decode processes). Needs py-spy (`pip install py-spy`) and nginx. --tree runs another
checkout (the baseline), so that both profiles come from the same script.

    python benchmarks/profile_pod.py [--tree ../base] [--seconds 10]
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pipeline_rate as bench

STAGES = ("Pipeline._fetch_loop", "Pipeline._lookup_stage", "DecodePool._serve", "Pipeline._engine_loop", "Delivery.run",
          "Delivery._publish_loop", "Sender.run", "NetworkSelector.run_forever", "KafkaTransport._probe_loop")


def summarize(raw: Path, by_stage: bool, top: int) -> list[tuple[str, float]]:
    counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = [f.split(" (")[0] for f in stack.split(";")]
        total += int(n)
        if by_stage:
            key = next((f for f in frames if f in STAGES), "other")
        else:
            own = [f for f in frames if not f.startswith(("process ", "<module>", "_run_module", "main", "serve"))]
            key = own[-1] if own else "other"
        counts[key] += int(n)
    return [(k, 100 * v / max(total, 1)) for k, v in counts.most_common(top)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, default=bench.ROOT, help="the checkout to profile")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        root, _ = bench.web_root(tmp, bench.image_set("synthetic", 2500)[0])
        model = tmp / "stub"
        bench.import_checkpoint(bench.write_official_checkpoint(tmp / "stub.pth", bench.tiny_architecture()), model)
        broker, redis = bench.Broker(), bench.RedisServer()
        broker.start()
        redis.start()
        try:
            with bench.nginx(root) as base:
                topics = {"input": "in", "output": "out", "dlq": "dlq"}
                broker.create_topics({"in": 8, "out": 1, "dlq": 1})
                env = {"DDA_REDIS_URL": redis.url, "DDA_CONSUMERS": "2", "DDA_DECODE_WORKERS": "2", "DDA_FETCH_WORKERS": "16",
                       "DDA_LOG_LEVEL": "warning", "DDA_BENCH_STUB": "1", "PYTHONPATH": f"{bench.STUB}{os.pathsep}{args.tree}"}
                worker = bench.Worker(model, broker, topics, bench.unique("profile"), tmp / "worker.log", cwd=args.tree, **env)
                worker.start()
                try:
                    worker.wait_ready(180)
                    reader = broker.reader("out", fetch_max_wait_ms=10)
                    assert worker.proc is not None
                    classes = bench.process_classes(worker.proc.pid)
                    consumer = next(p for p, c in classes.items() if c == "consumer")
                    decoder = next(p for p, c in classes.items() if c == "decode")
                    flood = threading.Thread(target=bench.run_phase, args=(broker, "in", reader, [f"{base}/{n}.jpg" for n in range(2500)],
                                                                         "flood", None), daemon=True)
                    flood.start()
                    record = [[py_spy, "record", "-p", str(pid), "-r", "250", "-f", "raw", "-o", str(tmp / f"{name}.raw"),
                               "-d", str(int(args.seconds)), "--nonblocking", *extra]
                              for pid, name, extra in ((consumer, "consumer", ["--gil"]), (decoder, "decode", []))]
                    spies = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for cmd in record]
                    for spy in spies:
                        spy.wait(args.seconds + 60)
                    print(f"tree: {args.tree}")
                    print("consumer process, share of its Python (GIL-holding) samples by stage thread:")
                    for name, share in summarize(tmp / "consumer.raw", True, 10):
                        print(f"  {share:5.1f}%  {name}")
                    print("decode process, share of its active samples by innermost function:")
                    for name, share in summarize(tmp / "decode.raw", False, 8):
                        print(f"  {share:5.1f}%  {name}")
                finally:
                    worker.kill()
        finally:
            broker.kill()
            redis.stop()


if __name__ == "__main__":
    main()
