"""The wire between worker processes and the engine process (`engine.serving.server`, `engine.serving.client`).

One Unix SOCK_SEQPACKET connection per worker process: message boundaries are kept and a
peer's death reads as end of file. The crops never cross the socket: each worker process
makes a memfd of `capacity` crop slots, passes its descriptor once in the hello, and from
then on writes crops there and sends only (sequence, count, model). Slots have one crop size,
so a worker scoring models of two crop sizes (DDA and a second detector) holds a connection
for each. Every message is fixed-layout bytes, never pickle: a process that parses hostile
images must not be able to make the engine run code.

    hello    worker -> engine   MAGIC, capacity, crop size         + the memfd (SCM_RIGHTS)
    welcome  engine -> worker   MAGIC, max_batch, models held      (a bit per model below)
    request  worker -> engine   sequence, count, model             (crops 0..count-1 of the memfd; a model
                                                                     of the connection's crop size)
    answer   engine -> worker   sequence, status, engine batch     + count float32 logits, or a UTF-8 reason

Models: SERVED (DDA), SHADOW (a candidate scored beside it on the same crops), SECOND (the
second detector of an ensemble, on its own crops).
"""

from __future__ import annotations

import struct

MAGIC = b"DDA2"  # 2: the welcome names the models held, not their count
HELLO = struct.Struct("<4sII")
WELCOME = struct.Struct("<4sIB")
REQUEST = struct.Struct("<QIB")
SERVED, SHADOW, SECOND = 0, 1, 2
MODEL_NAMES = {SERVED: "served", SHADOW: "shadow", SECOND: "second"}
ANSWER = struct.Struct("<QII")
OK, FAILED = 0, 1
MAX_REASON = 2048


def answer_size(capacity: int) -> int:
    """The largest answer a worker with `capacity` slots can be sent."""
    return ANSWER.size + max(4 * capacity, MAX_REASON)


def crop_bytes(crop_size: int) -> int:
    return crop_size * crop_size * 3


def held(models: int) -> set[int]:
    """The models a welcome's bit field names."""
    return {m for m in MODEL_NAMES if models >> m & 1}
