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

A numpy `Generator` a program owns (a runner's, an env's `np_random`) is captured with
`generator_state` and put back in place with `set_generator_state`, in the same encoding as the
global numpy stream.

No framework is imported here: numpy is imported when used, and torch's generators are captured
(when asked) and restored only when the user's program has imported torch already.
"""

from __future__ import annotations

import random
import struct
import sys
from collections.abc import Mapping
from typing import Any, cast

__all__ = ["generator_state", "global_rng_state", "set_generator_state", "set_global_rng_state"]


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
    numpy_state = _encode(np.random.get_state(legacy=False))
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
            np.random.set_state(_decode(npy, np.random.get_state(legacy=False)))
    torch = sys.modules.get("torch") if "torch" in state or "cuda" in state else None
    if torch is None:
        return
    if "torch" in state:
        torch.set_rng_state(_byte_tensor(torch, state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_byte_tensor(torch, s) for s in state["cuda"]])


def generator_state(generator: Any) -> dict[str, Any]:
    """A numpy `Generator`'s (or bit generator's) state as JSON-serialisable data.

    Its bit generator's `state` dict, each array in it (MT19937's key, Philox's counter) as one
    hex string of its little-endian bytes, as `global_rng_state` writes the global stream.
    """
    return cast(dict[str, Any], _encode(getattr(generator, "bit_generator", generator).state))


def set_generator_state(generator: Any, state: Mapping[str, Any]) -> Any:
    """Load what `generator_state` returned into the numpy `generator`, in place.

    In place, so code holding `generator` draws from the restored stream. Also reads the Gym
    adapter's older layout (arrays as `{"__ndarray__": [...], "dtype": ...}`).

    Args:
        generator: the live `numpy.random.Generator`.
        state: the saved state (after a JSON round trip or not).

    Returns:
        `generator`, or a new `Generator` when the state is of another bit generator kind.
    """
    import numpy as np

    kind = state["bit_generator"]
    if type(generator.bit_generator).__name__ == kind:
        generator.bit_generator.state = _decode(state, generator.bit_generator.state)
        return generator
    bit_generator = getattr(np.random, kind)()
    bit_generator.state = _decode(state, bit_generator.state)
    return np.random.Generator(bit_generator)


def _encode(value: Any) -> Any:
    """A bit generator's state (ints up to 128 bits, numpy arrays and scalars) as JSON data."""
    import numpy as np

    if isinstance(value, Mapping):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.astype(value.dtype.newbyteorder("<")).tobytes().hex()
    if isinstance(value, np.integer):
        return int(value)
    return value


def _decode(value: Any, template: Any) -> Any:
    """`_encode`'s output back, arrays rebuilt with the dtype and shape of `template`'s (the
    live state of the same kind); also from the older layouts (lists of ints, tensors, Gym's
    `{"__ndarray__": ...}`)."""
    import numpy as np

    if isinstance(template, np.ndarray):
        if isinstance(value, str):
            stored = np.frombuffer(bytes.fromhex(value), template.dtype.newbyteorder("<"))
            return stored.astype(template.dtype).reshape(template.shape)
        if isinstance(value, Mapping) and "__ndarray__" in value:
            return np.asarray(value["__ndarray__"], dtype=value["dtype"])
        return np.asarray(value.tolist() if hasattr(value, "tolist") else value, template.dtype)
    if isinstance(value, Mapping):
        inner = template if isinstance(template, Mapping) else {}
        return {k: _decode(v, inner.get(k)) for k, v in value.items()}
    return value


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
