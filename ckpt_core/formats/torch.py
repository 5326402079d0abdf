"""The `torch` format: one `torch.save` file, `state.pt`, loaded back with `weights_only=True`.

`torch.load(<step dir>/state.pt, weights_only=True)` opens a payload with torch alone, so
Lightning's `load_from_checkpoint` and `Trainer(ckpt_path=...)` read it as their own.

The file is written without torch's per-record CRC32: the manifest's xxh3 checksum already
covers every byte and is checked on every restore, and skipping the CRC makes the save
CPU-cheap enough to keep up with the disk. `torch.load` does not need it; zip tools that
test archives (`unzip -t`) will report the missing CRCs.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import sys
import threading
from collections.abc import Iterator
from typing import Any

from .. import _tree
from ..errors import UnsafeFormatError
from ..storage import StepWriter
from .base import StepReader, fit_like, host_copy, register_format, torch_module

PAYLOAD = "state.pt"


class TorchFormat:
    """Any state `torch.save` takes and `torch.load(weights_only=True)` gives back."""

    name = "torch"
    main_file = "state.pt"

    def accepts(self, state: Any) -> bool:
        if "torch" not in sys.modules:
            return False
        return any(_tree.is_torch_tensor(leaf) for _, leaf in _tree.iter_leaves_lenient(state))

    def snapshot(self, state: Any) -> Any:
        return _tree.rebuild_like(state, lambda _, leaf: host_copy(leaf))

    def write(self, state: Any, writer: StepWriter) -> None:
        torch = torch_module()
        with writer.open(PAYLOAD) as f, _without_zip_crc(torch):
            torch.save(state, f)

    def read(self, reader: StepReader, like: Any = None) -> Any:
        torch = torch_module()
        path = reader.local_path(PAYLOAD)
        try:
            if path is not None:
                reader.verify(PAYLOAD)
                obj = torch.load(path, weights_only=True, map_location="cpu", mmap=reader.lazy)
            else:
                data = io.BytesIO(reader.read_bytes(PAYLOAD))
                obj = torch.load(data, weights_only=True, map_location="cpu")
        except pickle.UnpicklingError as e:
            raise UnsafeFormatError(
                f"{reader.display(PAYLOAD)} holds objects that torch.load(weights_only=True) "
                f"refuses to rebuild: {str(e).splitlines()[0]}. HINT: if you trust this file, allow "
                "those classes with torch.serialization.add_safe_globals([...]) before restoring."
            ) from None
        if like is not None:
            return fit_like(obj, like, f"step {reader.manifest.step}")
        return obj


_CRC_OPTION = threading.Lock()


@contextlib.contextmanager
def _without_zip_crc(torch: Any) -> Iterator[None]:
    serialization = torch.serialization
    if not hasattr(serialization, "set_crc32_options"):  # older torch: always computes it
        yield
        return
    with _CRC_OPTION:
        previous = serialization.get_crc32_options()
        serialization.set_crc32_options(False)
        try:
            yield
        finally:
            serialization.set_crc32_options(previous)


register_format(TorchFormat())
