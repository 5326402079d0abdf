"""The process-global random streams (Python's `random`, numpy's `np.random`) as plain JSON data.

Training code draws from these without saying so (replay buffers sampling with
`np.random.randint`, augmentations with `random.random`), so an exact resume must carry them.
`global_rng_state()` returns them as JSON-serialisable data (no arrays, no pickle) that fits in
any checkpoint format; `set_global_rng_state` puts them back. numpy is imported lazily: the
core imports no numerical library at module import time.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

__all__ = ["global_rng_state", "set_global_rng_state"]


def global_rng_state() -> dict[str, Any]:
    """Python's and numpy's global generator states, as JSON-serialisable data.

    Returns:
        `{"python": [...], "numpy": {...}}`: the numpy part is `np.random.get_state(legacy=False)`
        with its key array as a list of ints.
    """
    import numpy as np

    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"] = {
        "key": [int(x) for x in numpy_state["state"]["key"]],
        "pos": int(numpy_state["state"]["pos"]),
    }
    return {"python": [version, list(internal), gauss], "numpy": numpy_state}


def set_global_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what `global_rng_state()` returned; a stream missing from `state` is left as is.

    Args:
        state: the mapping `global_rng_state()` returned (after a JSON round trip or not).
    """
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        import numpy as np

        numpy_state = dict(state["numpy"])
        inner = numpy_state["state"]
        numpy_state["state"] = {"key": np.asarray(inner["key"], np.uint32), "pos": inner["pos"]}
        np.random.set_state(numpy_state)
