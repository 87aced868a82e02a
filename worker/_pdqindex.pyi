"""Types of the C extension worker/_pdqindex.c."""

from typing import Any

import numpy as np

def build(codes: np.ndarray[Any, Any], start: int, end: int, k: int, directory: np.ndarray[Any, Any], ids: np.ndarray[Any, Any],
          lows: np.ndarray[Any, Any], /) -> None: ...
def search(codes: np.ndarray[Any, Any], end: int, directory: np.ndarray[Any, Any], ids: np.ndarray[Any, Any], lows: np.ndarray[Any, Any],
           k: int, live_from: int, queries: np.ndarray[Any, Any], max_distance: int, per_bucket: int, budget: int,
           best_distance: np.ndarray[Any, Any], best_id: np.ndarray[Any, Any], capped: np.ndarray[Any, Any], /) -> None: ...
def scan(codes: np.ndarray[Any, Any], start: int, end: int, queries: np.ndarray[Any, Any], max_distance: int,
         best_distance: np.ndarray[Any, Any], best_id: np.ndarray[Any, Any], /) -> None: ...
