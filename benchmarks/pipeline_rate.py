"""End to end: CPU per verdict over every process of a worker (one process, or a pod: consumer
processes + one engine process + their decode processes), side by side in one run with the code
before (--baseline, a checkout of it), and the floor the same work costs outside the worker.

Real parts on 127.0.0.1: tansu (broker), redis-server (cache), nginx (Debian's; the image origin,
serving files from a temporary directory; Python's http.server where nginx is not installed, said
so beside the figures). Models: a zero-cost stub (the pipeline is what is measured), the tiny ViT,
or (on a GPU) a random full-size ViT-L in the official layout; `vitl+graphs` is the ViT-L with
DDA_COMPILE=on. On a GPU, its utilisation is sampled (NVML) through the flood and paced phases.

Images (--images): `synthetic`, distinct 640x480 JPEGs of generated scenes; `camera`, the
single-scan JPEGs of ../shared/data between 1 and 3.2 MP (what cameras write; progressive and
multi-scan files take a whole decode, see benchmarks/prepare_cost.py), each served many times
under distinct names with a JPEG comment segment carrying a counter (distinct bytes, so distinct
SHA-256: every request a miss).

For each configuration:
  1. flood: N requests for N distinct images produced at once; verdicts/s from the first produce
     to the last verdict read, and CPU ms per verdict of each process class (/proc utime+stime
     over the phase) and in all;
  2. paced: requests produced at 70% of that rate for `--paced-s` seconds; latency p50/p99 from
     the produce call to the verdict being read. tansu answers a waiting fetch late, so a
     request reaches the worker about 90 ms after it was produced: that much of every latency
     is the broker's;
  3. hits: the flood's images again, --hit-rounds times, under new ids, at once: exact cache hits,
     CPU per verdict.
Floor, once per run on the same images, machine and servers (each in a process of its own, its
CPU per item): (a) a minimal kafka-python loop that consumes the requests and produces a
verdict-sized record for each (acks=all, idempotent, commits per poll); (b) a minimal fetch of
the same URLs from the same nginx with httpx, the worker's client; (c) `prepare()` (the centre
crop's decode + PDQ, what a decode process does) on the same bytes.

    python benchmarks/pipeline_rate.py --baseline ../base --configs basepod:stub,pod:stub [--images camera]
    on a GPU:  --device cuda --consumers 4 --decode-workers 11 --configs pod:stub,pod:vitl [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import describe  # noqa: E402
from tables import pipeline_table  # noqa: E402

from engine.model.checkpoint import import_checkpoint  # noqa: E402
from engine.model.synthetic import VIT_L, tiny_architecture, write_official_checkpoint  # noqa: E402
from tests.images import SHARED_DATA, encode, scene  # noqa: E402
from tests.services import Broker, RedisServer, Worker, descendants, free_port, unique, wait_for  # noqa: E402

TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")
STUB = str(ROOT / "benchmarks" / "stub_model")
VERDICT_BYTES = 1100  # a miss's verdict record, about (the floor's consumer produces this much per message)


def with_comment(jpeg: bytes, text: str) -> bytes:
    """The same JPEG with a comment segment after its start marker: other bytes, same pixels."""
    body = text.encode()
    return jpeg[:2] + b"\xff\xfe" + (len(body) + 2).to_bytes(2, "big") + body + jpeg[2:]


def synthetic_jpeg(seed: int) -> bytes:
    return encode(scene(640, 480, seed=seed), "JPEG", quality=90)


def image_set(kind: str, count: int) -> tuple[list[bytes], str]:
    """`count` distinct image files, and a description."""
    if kind == "synthetic":  # ~25 ms each: made on every core
        with ProcessPoolExecutor() as pool:
            return list(pool.map(synthetic_jpeg, range(count), chunksize=64)), "distinct 640x480 JPEGs"
    from engine.imaging.decode import decode_crop, open_checked

    sources = []
    for path in sorted(SHARED_DATA.rglob("*")):
        data = path.read_bytes() if path.suffix.lower() in (".jpg", ".jpeg") else b""
        if not data.startswith(b"\xff\xd8"):  # a few files there are PNGs under a .jpg name
            continue
        with open_checked(data, 64_000_000) as image:
            size = image.width * image.height
        # what a camera writes: single-scan JPEGs, whose crop is a region decode (progressive,
        # multi-scan and CMYK files take a whole decode: benchmarks/prepare_cost.py reports them)
        if 1e6 <= size <= 3.2e6 and decode_crop(data).whole is None:
            sources.append(data)
    if not sources:
        raise SystemExit(f"no 1-3 MP JPEGs in {SHARED_DATA}")
    files = [with_comment(sources[i % len(sources)], f"dda-bench {i}") for i in range(count)]
    return files, (f"{len(sources)} single-scan 1-3 MP JPEGs of ../shared/data (mean {np.mean([len(f) for f in files]) / 1e6:.2f} MB), "
                   "each re-served as distinct bytes")


@contextmanager
def origin(root: Path) -> Iterator[tuple[str, str]]:
    """An HTTP server on a free loopback port serving `root`, and its name: Debian's nginx, else
    Python's http.server (a CPU rehearsal on a machine without nginx); stopped by PID."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    if not Path(binary).exists():
        proc = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(root), str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        name = "python http.server (nginx is not installed)"
    else:
        proc = _nginx(binary, root, port)
        name = "nginx"
    try:
        import urllib.request

        def up() -> bool:
            try:
                return bool(urllib.request.urlopen(f"http://127.0.0.1:{port}/0.jpg", timeout=1).status == 200)
            except OSError:
                return False

        wait_for(up, 10, f"{name} to serve")
        yield f"http://127.0.0.1:{port}", name
    finally:
        proc.terminate()
        proc.wait(10)


def _nginx(binary: str, root: Path, port: int) -> subprocess.Popen[bytes]:
    conf = root.parent / "nginx.conf"
    conf.write_text(f"""
daemon off; worker_processes 1; pid {root.parent}/nginx.pid; error_log {root.parent}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off; sendfile on; keepalive_requests 100000;
  client_body_temp_path {root.parent}/tmp; proxy_temp_path {root.parent}/tmp; fastcgi_temp_path {root.parent}/tmp;
  uwsgi_temp_path {root.parent}/tmp; scgi_temp_path {root.parent}/tmp;
  types {{ image/jpeg jpg; }}
  server {{ listen 127.0.0.1:{port}; root {root}; }}
}}
""")
    return subprocess.Popen([binary, "-c", str(conf), "-p", str(root.parent), "-e", f"{root.parent}/nginx-error.log"])


@contextmanager
def gpu_sampler(period_s: float = 0.05) -> Iterator[list[tuple[int, int]]]:
    """Samples (GPU utilisation %, memory used MiB) of GPU 0 through NVML every `period_s` while
    the block runs; no samples where NVML (nvidia-ml-py) or a GPU is absent."""
    samples: list[tuple[int, int]] = []
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    except Exception:  # noqa: BLE001 - no NVML library, no driver, no GPU: nothing to sample
        yield samples
        return
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(period_s):
            samples.append((int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                            int(pynvml.nvmlDeviceGetMemoryInfo(handle).used) >> 20))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join()
        pynvml.nvmlShutdown()


def utilisation(samples: list[tuple[int, int]]) -> dict[str, float] | None:
    if not samples:
        return None
    busy = np.array([s[0] for s in samples])
    return {"samples": len(samples), "mean_pct": float(busy.mean()), "p50_pct": float(np.percentile(busy, 50)),
            "max_memory_mib": float(max(s[1] for s in samples))}


def web_root(tmp: Path, files: list[bytes]) -> tuple[Path, list[str]]:
    """`files` as 0.jpg, 1.jpg, ... in a folder nginx may serve (its workers drop to an
    unprivileged user when started as root); the folder and the names."""
    root = tmp / "www"
    root.mkdir()
    tmp.chmod(0o755)
    (tmp / "tmp").mkdir()
    for i, data in enumerate(files):
        (root / f"{i}.jpg").write_bytes(data)
    return root, [f"{i}.jpg" for i in range(len(files))]


def process_classes(root_pid: int) -> dict[int, str]:
    """pid -> class (worker, consumer, engine, decode) of the worker's process tree."""
    classes = {root_pid: "worker"}
    for pid, cmd in descendants(root_pid).items():
        if "engine.serving.main" in cmd:
            classes[pid] = "engine"
        elif "worker.decode.child" in cmd:
            classes[pid] = "decode"
        elif "worker.service" in cmd:
            classes[pid] = "consumer"
    return classes


def cpu_ticks(pids: dict[int, str]) -> dict[int, int]:
    out = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[pid] = int(fields[11]) + int(fields[12])
        except (OSError, IndexError):
            continue
    return out


def run_phase(broker: Broker, topic: str, reader, urls: list[str], tag: str, rate: float | None) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """Produce one request per URL (at once, or paced at `rate`/s); wait for every verdict.

    Verdicts are read on a thread of their own, so each is timed when it arrives, whatever the
    producing loop is doing (read between sends, a paced phase that fell behind its schedule
    timed verdicts late: seconds of latency that were the benchmark's own)."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=1)
    sent: dict[str, float] = {}
    received: dict[str, float] = {}
    statuses: dict[str, str] = {}
    deadline = time.monotonic() + 600

    def drain() -> None:
        while len(received) < len(urls) and time.monotonic() < deadline:
            for batch in reader.consumer.poll(timeout_ms=50).values():
                now = time.monotonic()
                for record in batch:
                    v = json.loads(record.value)
                    if v["id"].startswith(tag) and v["id"] not in received:
                        received[v["id"]] = now
                        statuses[v["id"]] = v["status"]

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    start = time.monotonic()
    for i, url in enumerate(urls):
        rid = f"{tag}{i}"
        if rate:
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
        sent[rid] = time.monotonic()
        producer.send(topic, json.dumps({"id": rid, "url": url}).encode())
    producer.flush()
    producer.close()
    thread.join()
    elapsed = max(received.values(), default=start) - start
    latencies = np.array([received[k] - sent[k] for k in received]) * 1000
    return {"verdicts": len(received), "ok": sum(s == "ok" for s in statuses.values()), "seconds": elapsed,
            "rate": len(received) / elapsed if elapsed else 0.0, "offered_rate": (len(urls) - 1) / max(sent[f"{tag}{len(urls) - 1}"] - start, 1e-9),
            "p50": float(np.percentile(latencies, 50)), "p99": float(np.percentile(latencies, 99))}


def cpu_phase(pids: dict[int, str], run: Callable[[], dict[str, object]]) -> tuple[dict[str, object], dict[str, float]]:
    """Run a phase; its result and the CPU ms each process class spent during it."""
    before = cpu_ticks(pids)
    result = run()
    after = cpu_ticks(pids)
    per_class: dict[str, float] = {}
    for pid, cls in pids.items():
        if pid in before and pid in after:
            per_class[cls] = per_class.get(cls, 0.0) + (after[pid] - before[pid]) * TICK_MS
    return result, per_class


def measure(name: str, consumers: int, model_kind: str, model: Path, broker: Broker, redis: RedisServer, base: str,
            images: list[str], args: argparse.Namespace, tmp: Path, tree: Path = ROOT) -> dict[str, object]:
    topics = {"input": unique("req"), "output": unique("out"), "dlq": unique("dlq")}
    broker.create_topics({topics["input"]: 8, topics["output"]: 1, topics["dlq"]: 1})
    subprocess.run(["redis-cli", "-p", str(redis.port), "FLUSHALL"], check=True, capture_output=True)
    env = {"DDA_REDIS_URL": redis.url, "DDA_CONSUMERS": str(consumers), "DDA_DECODE_WORKERS": str(args.decode_workers),
           "DDA_FETCH_WORKERS": "16", "DDA_MAX_BATCH": str(args.max_batch), "DDA_LOG_LEVEL": "warning", "DDA_FETCH_TIMEOUT_S": "30",
           "DDA_DEVICE": args.device,
           "PYTHONPATH": os.pathsep.join([STUB, str(tree), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if model_kind == "stub":
        env["DDA_BENCH_STUB"] = "1"
    if model_kind.endswith("+graphs"):
        env["DDA_COMPILE"] = "on"
    worker = Worker(model, broker, topics, unique("bench"), tmp / f"{name}.log", cwd=tree, **env)
    worker.start()
    try:
        worker.wait_ready(180)
        reader = broker.reader(topics["output"], fetch_max_wait_ms=10)
        urls = iter(f"{base}/{name}" for name in images)
        run_phase(broker, topics["input"], reader, [next(urls) for _ in range(args.warmup)], "warm", None)
        assert worker.proc is not None
        pids = process_classes(worker.proc.pid)
        flood_urls = [next(urls) for _ in range(args.requests)]
        with gpu_sampler() as flood_gpu:
            flood, per_class = cpu_phase(pids, lambda: run_phase(broker, topics["input"], reader, flood_urls, "flood", None))
        rate = args.paced_rate or 0.7 * float(flood["rate"])  # type: ignore[arg-type]
        paced_n = min(args.paced_images, max(20, int(rate * args.paced_s)))
        with gpu_sampler() as paced_gpu:
            paced = run_phase(broker, topics["input"], reader, [next(urls) for _ in range(paced_n)], "paced", rate)
        hits, hit_class = cpu_phase(pids, lambda: run_phase(broker, topics["input"], reader, flood_urls * args.hit_rounds, "hit", None))
        status = worker.terminate(60)
        if status != 0:  # say why beside the figures
            print(f"{name}: exit status {status}; the end of its log:", *(tmp / f"{name}.log").read_text().splitlines()[-15:], sep="\n")
        count = {cls: sum(1 for c in pids.values() if c == cls) for cls in set(pids.values())}
        return {"name": name, "flood": flood, "paced": paced, "hits": hits, "paced_rate": rate, "exit": status, "processes": count,
                "gpu_flood": utilisation(flood_gpu), "gpu_paced": utilisation(paced_gpu),
                "cpu_ms_per_miss": {cls: ms / int(flood["verdicts"]) for cls, ms in sorted(per_class.items())},  # type: ignore[call-overload]
                "cpu_ms_per_hit": {cls: ms / int(hits["verdicts"]) for cls, ms in sorted(hit_class.items())}}  # type: ignore[call-overload]
    finally:
        worker.kill()


# The floor: the same work done by the simplest programs that do it, each its own process.
FLOOR_KAFKA = """
import json, os, resource, sys, time
from kafka import KafkaConsumer, KafkaProducer
bootstrap, source, sink, group, count, size = sys.argv[1:7]
consumer = KafkaConsumer(source, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                         auto_offset_reset="earliest", session_timeout_ms=6000, max_poll_records=128)
producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5)
value = b"x" * int(size)
start = resource.getrusage(resource.RUSAGE_SELF)
seen = 0
while seen < int(count):
    for records in consumer.poll(timeout_ms=200).values():
        for record in records:
            json.loads(record.value)
            producer.send(sink, key=str(record.offset).encode(), value=value)
            seen += 1
    producer.flush()
    consumer.commit()
end = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"ms": ((end.ru_utime + end.ru_stime) - (start.ru_utime + start.ru_stime)) * 1000 / seen}))
consumer.close(); producer.close()
"""

FLOOR_FETCH = """
import json, resource, sys
import httpx
urls = json.loads(sys.stdin.read())
client = httpx.Client()
start = resource.getrusage(resource.RUSAGE_SELF)
for url in urls:
    client.get(url).read()
end = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"ms": ((end.ru_utime + end.ru_stime) - (start.ru_utime + start.ru_stime)) * 1000 / len(urls)}))
"""

FLOOR_DECODE = """
import json, resource, sys
from pathlib import Path
from worker.decode.prepare import prepare
files = [Path(p).read_bytes() for p in json.loads(sys.stdin.read())]
start = resource.getrusage(resource.RUSAGE_SELF)
for data in files:
    prepare(data, 336, 1, 64_000_000)
end = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"ms": ((end.ru_utime + end.ru_stime) - (start.ru_utime + start.ru_stime)) * 1000 / len(files)}))
"""


def _child(script: str, args: list[str], stdin: str = "") -> float:
    proc = subprocess.run([sys.executable, "-c", script, *args], input=stdin, capture_output=True, text=True, check=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])})
    return float(json.loads(proc.stdout.splitlines()[-1])["ms"])


def floor(broker: Broker, base: str, names: list[str], root: Path, verdict_bytes: int) -> dict[str, float]:
    """CPU ms per item of (a) consume + produce, (b) fetch, (c) decode + PDQ, on `names`."""
    source, sink = unique("floor-in"), unique("floor-out")
    broker.create_topics({source: 8, sink: 1})
    broker.produce(source, [json.dumps({"id": f"f{i}", "url": f"{base}/{n}"}).encode() for i, n in enumerate(names)])
    return {"kafka": _child(FLOOR_KAFKA, [broker.bootstrap, source, sink, unique("floor"), str(len(names)), str(verdict_bytes)]),
            "fetch": _child(FLOOR_FETCH, [], json.dumps([f"{base}/{n}" for n in names])),
            "decode": _child(FLOOR_DECODE, [], json.dumps([str(root / n) for n in names]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=600, help="flood phase size (the hits phase repeats it)")
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--paced-s", type=float, default=8.0, help="paced phase length (at most --paced-images requests)")
    parser.add_argument("--paced-images", type=int, default=1500)
    parser.add_argument("--paced-rate", type=float, help="requests/s of the paced phase (default: 70%% of the flood's rate)")
    parser.add_argument("--consumers", type=int, default=2, help="consumer processes of the pod")
    parser.add_argument("--decode-workers", type=int, default=2, help="decode processes (a pod splits them)")
    parser.add_argument("--configs", default="one:stub,pod:stub,one:tiny,pod:tiny",
                        help="MODE:MODEL,...: MODE one (one process), pod, base or basepod (the same of --baseline's code)")
    parser.add_argument("--images", default="synthetic", choices=("synthetic", "camera"))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--baseline", type=Path, help="a checkout of the code before (its C extensions built) for MODE base/basepod")
    parser.add_argument("--hit-rounds", type=int, default=3, help="the hits phase sends the flood's images this many times")
    parser.add_argument("--no-floor", action="store_true", help="skip the floor measurements")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    configs = [c.split(":") for c in args.configs.split(",")]
    per_config = args.warmup + args.requests + args.paced_images

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        models = {}
        for kind in {k.split("+")[0] for _, k in configs}:  # vitl+graphs: the same model, compiled
            models[kind] = tmp / kind
            architecture = VIT_L if kind == "vitl" else tiny_architecture()  # the stub loads (and ignores) the tiny one
            import_checkpoint(write_official_checkpoint(tmp / f"{kind}.pth", architecture), models[kind])
        files, described = image_set(args.images, per_config)
        root, images = web_root(tmp, files)
        broker = Broker()  # tansu; noida-db answers fetches at once, so an idle worker spins a core on it (measured)
        redis = RedisServer()
        broker.start()
        redis.start()
        results = []
        floor_ms: dict[str, float] = {}
        try:
            with origin(root) as (base, origin_name):
                for mode, model_kind in configs:  # the same images each time: the cache is emptied in between
                    consumers = args.consumers if mode in ("pod", "basepod") else 1
                    tree = args.baseline if mode in ("base", "basepod") else ROOT
                    results.append(measure(f"{mode}-{model_kind}", consumers, model_kind, models[model_kind.split("+")[0]], broker, redis,
                                           base, images, args, tmp, tree))
                if not args.no_floor:
                    floor_ms = floor(broker, base, images[args.warmup : args.warmup + args.requests], root, VERDICT_BYTES)
        finally:
            broker.kill()
            redis.stop()

    machine = describe()
    setup = (f"{args.requests} {described} per flood (after {args.warmup} warm-up), all cache misses, then the same "
             f"{args.hit_rounds} times again under new ids (exact hits); {origin_name}, tansu, redis-server on 127.0.0.1; "
             f"{args.decode_workers} decode processes in all; pod = {args.consumers} consumer processes + 1 engine process; "
             f"max batch {args.max_batch}; device {args.device}")
    report = {"machine": machine, "setup": setup, "results": results, "floor_ms": floor_ms}
    print(f"machine: {json.dumps(machine)}", *pipeline_table(report), sep="\n")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if floor_ms:
        total = sum(floor_ms.values())
        print(f"floor, CPU ms per item: (a) consume + produce {floor_ms['kafka']:.2f}, (b) fetch {floor_ms['fetch']:.2f}, "
              f"(c) decode + PDQ {floor_ms['decode']:.2f}; (a)+(b)+(c) = {total:.2f}")
        for r in results:
            print(f"  {r['name']}: CPU per miss = {sum(r['cpu_ms_per_miss'].values()) / total:.2f}x the floor")  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
