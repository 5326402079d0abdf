"""The process-global random streams (Python, numpy, torch) captured and restored as plain data.

Training code draws from these without saying so (replay buffers sampling with
`np.random.randint`, augmentations with `random.random`, dropout with torch's generator), so an
exact resume must carry them. `global_rng_state()` returns them as JSON-serialisable data (no
arrays, no pickle: each generator's bulk state is one hex string of its bytes, compact and quick
to check), which fits in any checkpoint format, a JSON string leaf and a
`torch.load(weights_only=True)` dict alike; `set_global_rng_state` puts them back.

```python
state = {"model": ..., "rng": global_rng_state(include_torch=True)}
...
set_global_rng_state(restored["rng"])
```

No framework is imported here: numpy is imported when used, and torch's generators are captured
(when asked) and restored only when the user's program has imported torch already.
"""

from __future__ import annotations

import random
import struct
import sys
from collections.abc import Mapping
from typing import Any

__all__ = ["global_rng_state", "set_global_rng_state"]


def global_rng_state(*, include_torch: bool = False) -> dict[str, Any]:
    """The global generators' states, as JSON-serialisable data.

    Args:
        include_torch: also capture torch's CPU generator and, once CUDA is initialised, every
            CUDA device's, if the program has imported torch (a program that has not draws
            nothing from it; torch is never imported here).

    Returns:
        `{"python": [version, words, gauss], "numpy": {...}}`, plus `"torch": bytes` and
        `"cuda": [bytes, ...]` when torch is included. The numpy part is
        `np.random.get_state(legacy=False)`. Words (Python's internal state, numpy's key array)
        are little-endian uint32s and bytes (torch's states), each as one hex string.
    """
    import numpy as np

    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"] = {
        "key": numpy_state["state"]["key"].astype("<u4").tobytes().hex(),
        "pos": int(numpy_state["state"]["pos"]),
    }
    words = struct.pack(f"<{len(internal)}I", *internal).hex()
    states: dict[str, Any] = {"python": [version, words, gauss], "numpy": numpy_state}
    torch = sys.modules.get("torch") if include_torch else None
    if torch is not None:
        states["torch"] = torch.get_rng_state().numpy().tobytes().hex()
        if torch.cuda.is_initialized():
            states["cuda"] = [s.numpy().tobytes().hex() for s in torch.cuda.get_rng_state_all()]
    return states


def set_global_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what `global_rng_state()` returned; a stream missing from `state` is left as is.

    Also reads the layouts written before: words as lists of ints (`ckpt_core.rng` until
    torch was added) and `integrations.lightning`'s own (`"python"` and `"numpy"` as mappings
    of tensors, `"torch"` a tensor), so those checkpoints still resume. The
    torch streams are restored only when torch is imported (a program that has not imported it
    draws nothing from it), the CUDA ones only when CUDA is available.

    Args:
        state: the mapping `global_rng_state()` returned (after a JSON round trip or not).
    """
    if "python" in state:
        py = state["python"]
        if isinstance(py, Mapping):  # {"version", "internal": tensor, "gauss"}
            py = (py["version"], py["internal"], py["gauss"])
        version, internal, gauss = py
        random.setstate((version, tuple(_words(internal)), gauss))
    if "numpy" in state:
        import numpy as np

        npy = state["numpy"]
        if "kind" in npy:  # np.random.get_state(legacy=True)'s fields, keys as a tensor
            np.random.set_state(
                (
                    npy["kind"],
                    np.asarray(_words(npy["keys"]), np.uint32),
                    npy["pos"],
                    npy["has_gauss"],
                    npy["cached_gaussian"],
                )
            )
        else:
            numpy_state = dict(npy)
            inner = numpy_state["state"]
            key = np.asarray(_words(inner["key"]), np.uint32)
            numpy_state["state"] = {"key": key, "pos": inner["pos"]}
            np.random.set_state(numpy_state)
    torch = sys.modules.get("torch") if "torch" in state or "cuda" in state else None
    if torch is None:
        return
    if "torch" in state:
        torch.set_rng_state(_byte_tensor(torch, state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_byte_tensor(torch, s) for s in state["cuda"]])


def _words(values: Any) -> list[int]:
    """uint32 words from their hex string, a list of ints or a tensor (older checkpoints)."""
    if isinstance(values, str):
        raw = bytes.fromhex(values)
        return list(struct.unpack(f"<{len(raw) // 4}I", raw))
    return [int(v) for v in (values.tolist() if hasattr(values, "tolist") else values)]


def _byte_tensor(torch: Any, values: Any) -> Any:
    """A generator state as torch wants it (a uint8 CPU tensor), from its hex string, a list of
    ints or a tensor (older checkpoints)."""
    if isinstance(values, str):
        return torch.frombuffer(bytearray.fromhex(values), dtype=torch.uint8)
    if isinstance(values, torch.Tensor):
        return values.to(device="cpu", dtype=torch.uint8)
    return torch.tensor(values, dtype=torch.uint8)
