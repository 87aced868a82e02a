"""Types of the C extension worker/cache/_pdqindex.c."""

from collections.abc import Sequence
from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]

def build(sources: Sequence[tuple[Array, Array, int]], dead: Array, k: int, codes: Array, ages: Array, dir0: Array, groups: Array,
          offs: Array, entries: Array, /) -> None: ...
def search(segment: tuple[Array, Array, int, Array, Array, Array, Array], dead: Array, tag: int, queries: Array, max_distance: int,
           per_bucket: int, budget: int, best_distance: Array, best_id: Array, capped: Array, /) -> None: ...
def scan(codes: Array, ages: Array, n: int, dead: Array, tag: int, queries: Array, max_distance: int, best_distance: Array,
         best_id: Array, /) -> None: ...
