"""CPU per fetch of the worker's Fetcher, this checkout's and --baseline's, side by side in one
run, with httpx's plain client as the floor: 400 distinct 640x480 JPEGs (50 KB) from nginx on
127.0.0.1, fetched three times over by 1 thread and by 16 threads sharing one fetcher (the
worker's fetch stage). Each measurement runs in a process of its own (its whole CPU counted).

    python benchmarks/fetch_cost.py [--baseline ../base]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pipeline_rate as bench

MEASURE = """
import json, resource, sys, threading
urls, threads, kind = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
if kind == "httpx":
    import httpx
    client = httpx.Client()
    get = lambda url: client.get(url).read()
else:
    from worker.fetch.client import Fetcher, FetchPolicy, parse_networks
    fetcher = Fetcher(FetchPolicy(allow_networks=parse_networks("127.0.0.0/8")), max_connections=16)
    get = fetcher.get
work, lock = iter(urls * 3), threading.Lock()
def run():
    while True:
        with lock:
            url = next(work, None)
        if url is None:
            return
        get(url)
start = resource.getrusage(resource.RUSAGE_SELF)
pool = [threading.Thread(target=run) for _ in range(threads)]
for t in pool: t.start()
for t in pool: t.join()
end = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"ms": ((end.ru_utime + end.ru_stime) - (start.ru_utime + start.ru_stime)) * 1000 / (3 * len(urls))}))
"""


def measure(tree: Path, urls: list[str], threads: int, kind: str) -> float:
    proc = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(urls), str(threads), kind], capture_output=True, text=True,
                          check=True, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)})
    return float(json.loads(proc.stdout.splitlines()[-1])["ms"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="a checkout of the code before")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        root, _ = bench.web_root(tmp, bench.image_set("synthetic", 400)[0])
        with bench.nginx(root) as base:
            urls = [f"{base}/{i}.jpg" for i in range(400)]
            rows = [("httpx.Client (the floor)", bench.ROOT, "httpx")]
            if args.baseline:
                rows.append(("Fetcher, before", args.baseline, "fetcher"))
            rows.append(("Fetcher, after", bench.ROOT, "fetcher"))
            results = [(name, measure(tree, urls, 1, kind), measure(tree, urls, 16, kind)) for name, tree, kind in rows]
    print(f"machine: {json.dumps(bench.describe())}")
    print("| client | CPU ms per fetch, 1 thread | 16 threads |")
    print("|---|---|---|")
    for name, one, many in results:
        print(f"| {name} | {one:.2f} | {many:.2f} |")


if __name__ == "__main__":
    main()
