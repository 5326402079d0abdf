"""The `pickle` format: a zstd-compressed pickle, for states no other format can hold.

Unpickling runs code chosen by whoever wrote the file, so restoring a `pickle` step raises
`UnsafeFormatError` unless the caller passes `allow_pickle=True`; nothing is read before that.
"""

from __future__ import annotations

import copy
import pickle
from typing import Any, cast

import zstandard

from ..errors import UnsafeFormatError
from ..storage import StepWriter
from .like import fit_like
from .protocol import TreeListing
from .reader import StepReader

PAYLOAD = "state.pkl.zst"
ZSTD_LEVEL = 3


class PickleFormat:
    """Arbitrary Python objects; restoring needs `allow_pickle=True`."""

    name = "pickle"
    main_file = "state.pkl.zst"

    def accepts(self, state: Any) -> bool:
        return False  # never chosen by "auto": it must be asked for

    def snapshot(self, state: Any) -> Any:
        return copy.deepcopy(state)

    def write(self, state: Any, writer: StepWriter) -> None:
        with writer.open(PAYLOAD) as f:
            compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1)
            with compressor.stream_writer(f, closefd=False) as z:
                pickle.dump(state, z, protocol=pickle.HIGHEST_PROTOCOL)

    def read(self, reader: StepReader, like: Any = None) -> Any:
        if not reader.allow_pickle:
            raise UnsafeFormatError(
                f"step {reader.manifest.step} at {reader.display(PAYLOAD)} is a pickle; loading it "
                "can run arbitrary code. HINT: if you trust whoever wrote it, pass "
                "allow_pickle=True (CheckpointManager option, or load_checkpoint(..., allow_pickle=True))."
            )
        reader.verify(PAYLOAD)  # the whole file checks out before a single byte is unpickled
        with (
            reader.open(PAYLOAD) as f,
            zstandard.ZstdDecompressor().stream_reader(cast(Any, f)) as z,
        ):
            obj = pickle.load(z)
        if like is not None:
            return fit_like(obj, like, f"step {reader.manifest.step}")
        return obj

    def describe(self, reader: StepReader) -> TreeListing:
        """Nothing of the tree: reading it means unpickling, which can run code."""
        return TreeListing(
            [],
            "nothing",
            [
                "a pickle step: its tree is not shown, because reading it means unpickling, which "
                "can run code (restore it with allow_pickle=True if you trust it)"
            ],
        )
