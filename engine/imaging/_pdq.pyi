"""Types of the C extension engine/imaging/_pdq.c."""

from typing import Any

import numpy as np
from typing_extensions import Buffer

def rgb(pixels: Buffer | np.ndarray[Any, Any], height: int, width: int, /) -> tuple[bytes, int]: ...
def luma(pixels: Buffer | np.ndarray[Any, Any], height: int, width: int, /) -> tuple[bytes, int]: ...
