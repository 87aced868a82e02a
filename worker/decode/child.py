"""The decode process: reads jobs on stdin, answers on stdout, dies with its parent.

Started as `python -m worker.decode.child PARENT_PID CPU_S MEMORY_MB TRUST_ANCHORS_PEM SLOT_FD SLOT_BYTES`
by `worker.decode.pool` (an empty TRUST_ANCHORS_PEM: none);
it imports only the decoding code (no torch, no CLI). Each job runs under kernel limits, the
backstop behind the header checks in `engine.imaging.decode`: CPU_S seconds of CPU (RLIMIT_CPU, moved
before each job; SIGXCPU ends the process) and MEMORY_MB of address space beyond what the
process had when ready (RLIMIT_AS; an allocation past it fails, the job's answer says
`decode_limit` and asks the pool to replace this process, whose libraries may be left in
any state). The wire format is `worker.decode.frames`. The pixels of an answer go through
a shared-memory slot instead (a memfd of SLOT_BYTES the parent made for this process alone): the
header says their shape, the parent checks it against what it asked for and copies them out
before the next job. Through the pipe, a 640x480 image's crop (338 KB) took five trips through
its 64 KB buffer, each a context switch on both sides; an answer too large for the slot still
goes through the pipe.

A job that asks for provenance is answered in two frames: the pixels first, then what the
file's metadata says (`worker.provenance`). Metadata that crashes or stalls the process
costs the image its provenance (`provenance.error`), never its verdict.
"""

from __future__ import annotations

import mmap
import os
import signal
import sys
import time
from typing import IO

from engine.process import lifetime
from worker.decode.frames import read_frame, write_frame


def _read_exact(stream: IO[bytes], size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def limit_memory(memory_mb: int) -> None:
    """Address space: what the process maps now (Python, numpy, Pillow) plus the budget."""
    import resource

    with open("/proc/self/statm") as statm:
        mapped = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    cap = mapped + memory_mb * (1 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))


def limit_cpu_for_next_job(cpu_s: int) -> None:
    import resource

    used = resource.getrusage(resource.RUSAGE_SELF)
    soft = int(used.ru_utime + used.ru_stime) + 1 + cpu_s
    resource.setrlimit(resource.RLIMIT_CPU, (soft, resource.getrlimit(resource.RLIMIT_CPU)[1]))


def serve(jobs: IO[bytes], answers: IO[bytes], cpu_s: int, memory_mb: int, trust_anchors: str = "",
          slot: mmap.mmap | None = None) -> None:
    import resource

    import numpy as np

    from worker.decode.prepare import prepare
    from worker.errors import DECODE_LIMIT
    from worker.provenance import c2pa_manifest
    from worker.provenance.report import read_provenance  # c2pa-python loads on the first manifest only

    if trust_anchors:
        with open(trust_anchors) as pem:
            c2pa_manifest.trust(pem.read())
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGXCPU would otherwise dump core
    limit_memory(memory_mb)
    write_frame(answers, {"ready": True})
    while True:
        frame = read_frame(lambda n: _read_exact(jobs, n))
        if frame is None:  # the parent closed the pipe: shut down
            return
        header, data = frame
        limit_cpu_for_next_job(cpu_s)
        second = header.get("second")
        prepared = prepare(data, int(header["crop_size"]), int(header["crops"]), int(header["max_pixels"]),
                           bool(header.get("pdq", True)), (int(second[0]), int(second[1])) if second else None)
        pixels = prepared.crops
        if pixels is not None and prepared.second is not None:  # the second model's crop travels after the first's
            pixels = np.concatenate([pixels.reshape(-1), prepared.second.reshape(-1)])
        provenance = bool(header.get("provenance")) and prepared.error is None
        in_slot = slot is not None and pixels is not None and pixels.nbytes <= len(slot)
        if in_slot:
            assert slot is not None and pixels is not None
            np.copyto(np.frombuffer(slot, np.uint8, pixels.size).reshape(pixels.shape), pixels)
        write_frame(answers, {
            "shape": list(prepared.crops.shape) if prepared.crops is not None else None, "in_slot": in_slot,
            "second_shape": list(prepared.second.shape) if prepared.second is not None else None,
            "pdq": prepared.pdq, "pdq_quality": prepared.pdq_quality, "pdq_error": prepared.pdq_error,
            "error": list(prepared.error) if prepared.error else None, "decode_ms": prepared.decode_ms,
            "restart": bool(prepared.error and prepared.error[0] == DECODE_LIMIT), "provenance_follows": provenance,
        }, np.ascontiguousarray(pixels).tobytes() if pixels is not None and not in_slot else b"")
        if provenance:  # a second frame: if metadata kills this process, the pixels above are already answered
            started = time.perf_counter()
            record = read_provenance(data)
            write_frame(answers, {"provenance": record, "provenance_ms": (time.perf_counter() - started) * 1000})


def main() -> None:
    lifetime.die_with_parent(int(sys.argv[1]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent decides
    answers = sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt the protocol
    slot = mmap.mmap(int(sys.argv[5]), int(sys.argv[6])) if len(sys.argv) > 6 else None  # mapped before the memory limit
    serve(sys.stdin.buffer, answers, int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else "", slot)


if __name__ == "__main__":
    main()
