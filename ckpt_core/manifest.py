"""The manifest: the JSON record written last into a step, which makes the step exist.

It names the format, the step, the time, metrics, metadata, library versions and every
payload file with its size and an xxh3-64 checksum. A directory without a valid manifest is
not a step. Readers validate everything they take from it, so a hostile or damaged manifest
raises `CorruptCheckpointError` and can never point outside its step directory.
"""

from __future__ import annotations

import json
import math
import numbers
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from . import _tree
from .errors import CorruptCheckpointError
from .options import describe

MANIFEST_VERSION = 1
CHECKSUM = "xxh3_64"


@dataclass(frozen=True)
class FileRecord:
    size: int
    checksum: str


@dataclass(frozen=True)
class Manifest:
    step: int
    format: str
    files: Mapping[str, FileRecord]
    time: float = field(default_factory=time.time)
    metrics: Mapping[str, float] = field(default_factory=dict)
    metadata: Any = None
    versions: Mapping[str, str] = field(default_factory=dict)
    payload_dir: str = ""  # object stores: where a replacing write put its files

    @property
    def nbytes(self) -> int:
        return sum(f.size for f in self.files.values())

    def to_json(self) -> bytes:
        doc = {
            "ckpt_core_manifest": MANIFEST_VERSION,
            "step": self.step,
            "time": self.time,
            "format": self.format,
            "metrics": dict(self.metrics),
            "metadata": self.metadata,
            "versions": dict(self.versions),
            "payload_dir": self.payload_dir,
            "checksum": CHECKSUM,
            "files": {
                name: {"size": rec.size, CHECKSUM: rec.checksum}
                for name, rec in sorted(self.files.items())
            },
        }
        return json.dumps(doc, indent=1, allow_nan=True).encode()

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> Manifest:
        """Parse and validate; every problem raises CorruptCheckpointError naming `where`."""

        def bad(what: str) -> CorruptCheckpointError:
            return CorruptCheckpointError(
                f"invalid manifest {where}: {what}. The step cannot be trusted; "
                "HINT: restore an earlier step, or run `ckpt verify` on the directory.",
                path=where,
            )

        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise bad(f"not valid JSON ({type(e).__name__}: {str(e)[:100]})") from None
        if not isinstance(doc, dict):
            raise bad(f"expected a JSON object, found {type(doc).__name__}")
        version = doc.get("ckpt_core_manifest")
        if version != MANIFEST_VERSION:
            raise bad(
                f"manifest version {version!r}, this ckpt-core reads version {MANIFEST_VERSION} "
                "(a newer ckpt-core may have written it: upgrade)"
            )
        step: Any = doc.get("step")
        if not _is_int(step) or step < 0:
            raise bad(f"'step' must be a non-negative integer, found {step!r}")
        fmt = doc.get("format")
        if not isinstance(fmt, str) or not fmt:
            raise bad(f"'format' must be a name, found {fmt!r}")
        stamp = _finite(doc.get("time"))
        if stamp is None:
            raise bad(f"'time' must be a finite number, found {str(doc.get('time'))[:40]}")
        if doc.get("checksum", CHECKSUM) != CHECKSUM:
            raise bad(f"checksum algorithm {doc.get('checksum')!r}, expected {CHECKSUM!r}")
        payload_dir = doc.get("payload_dir", "")
        if not isinstance(payload_dir, str) or (payload_dir and not safe_relpath(payload_dir)):
            raise bad(f"'payload_dir' {payload_dir!r} is not a plain relative path")
        raw_files = doc.get("files")
        if not isinstance(raw_files, dict) or not raw_files:
            raise bad("'files' must be a non-empty object of file records")
        files: dict[str, FileRecord] = {}
        for name, rec in raw_files.items():
            if not safe_relpath(name):
                raise bad(f"file name {name!r} is not a plain relative path inside the step")
            if not isinstance(rec, dict):
                raise bad(f"record of {name!r} must be an object")
            size: Any = rec.get("size")
            digest = rec.get(CHECKSUM)
            if not _is_int(size) or not 0 <= size < 2**63:
                raise bad(f"size of {name!r} must be a non-negative integer, found {size!r}")
            if not isinstance(digest, str) or len(digest) != 16:
                raise bad(f"checksum of {name!r} must be 16 hex digits, found {digest!r}")
            files[name] = FileRecord(size, digest)
        metrics = doc.get("metrics") or {}
        if not isinstance(metrics, dict) or not all(
            isinstance(k, str) and _number(v) is not None for k, v in metrics.items()
        ):
            raise bad("'metrics' must map names to numbers that fit a float")
        versions = doc.get("versions") or {}
        if not isinstance(versions, dict):
            raise bad("'versions' must be an object")
        return cls(
            step=step,
            format=fmt,
            files=files,
            time=stamp,
            metrics={k: cast(float, _number(v)) for k, v in metrics.items()},
            metadata=doc.get("metadata"),
            versions={str(k): str(v) for k, v in versions.items()},
            payload_dir=payload_dir,
        )


def _number(x: Any) -> float | None:
    """`x` as a float if it is a JSON number that fits one (NaN allowed), else None."""
    if not isinstance(x, int | float) or isinstance(x, bool):
        return None
    try:
        return float(x)
    except OverflowError:  # an int of 400 digits
        return None


def _finite(x: Any) -> float | None:
    value = _number(x)
    return value if value is not None and math.isfinite(value) else None


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def safe_relpath(name: str) -> bool:
    """A relative path with no `..`, no absolute root, no backslash and no empty part."""
    if not isinstance(name, str) or not name or name.startswith("/") or "\\" in name:
        return False
    if "\x00" in name:
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def library_versions() -> dict[str, str]:
    """Versions of this library, Python and every framework already imported (none is imported)."""
    from . import __version__

    versions = {"ckpt_core": __version__, "python": sys.version.split()[0]}
    for name in ("numpy", "torch", "jax", "flax", "orbax.checkpoint", "lightning", "gymnasium"):
        mod = sys.modules.get(name)
        if mod is not None and hasattr(mod, "__version__"):
            versions[name] = str(mod.__version__)
    return versions


def check_metadata(metadata: Any) -> None:
    """Raise TypeError, before anything is written, if `metadata` cannot go into a manifest."""
    try:
        json.dumps(metadata, allow_nan=True)
    except (TypeError, ValueError, RecursionError) as e:
        raise TypeError(
            f"metadata must be JSON-serialisable (dicts, lists, strings, numbers, bools, None): "
            f"{e}. HINT: put arrays in the state instead; convert other values to str or float."
        ) from None


def to_float_metrics(
    metrics: Mapping[str, Any] | None, *, drop_non_numbers: bool = False
) -> dict[str, float]:
    """Python, numpy, torch or jax scalars -> floats (one host transfer for each device scalar).

    A 0-d (or one-element) tensor or array and a numpy scalar count as scalars, so an adapter
    passes a framework's logged values as they are. Infinities and NaN are stored as they are;
    they never rank for best (see retention).

    Args:
        metrics: names to numbers; None for none.
        drop_non_numbers: leave out the values that are not real scalar numbers instead of
            raising: for a framework's dict of logged values (Lightning's `callback_metrics`),
            which may hold other things that are no metric of the checkpoint.

    Raises:
        TypeError: `metrics` is not a mapping, a name is not a string, or (unless
            `drop_non_numbers`) a value is not a real scalar number (a string such as "0.5" or
            a bool is refused rather than guessed at).
    """
    if metrics is not None and not isinstance(metrics, Mapping):
        raise TypeError(
            f"metrics must be a mapping of names to numbers; found {describe(metrics)}. "
            "HINT: e.g. save(step, state, metrics={'loss': 0.5})."
        )
    items = dict(metrics or {})
    device_values = {k: v for k, v in items.items() if _tree.is_jax_array(v)}
    if device_values:
        import jax

        items.update(jax.device_get(device_values))  # one transfer for all of them
    out: dict[str, float] = {}
    for name, value in items.items():
        if not isinstance(name, str):
            raise TypeError(f"metric names must be strings, found {describe(name)}")
        try:
            number = value.item() if hasattr(value, "item") else value
        except (TypeError, ValueError, RuntimeError) as e:  # e.g. an array of several values
            number, reason = None, f": {e}"
        else:
            reason = ""
        if isinstance(number, bool) or not isinstance(number, numbers.Real):
            if drop_non_numbers:
                continue
            hint = {
                str: " HINT: convert it yourself, e.g. float(value).",
                bool: " HINT: pass float(flag), or put flags in metadata=.",
            }.get(type(number), "")
            raise TypeError(
                f"metric {name!r} must be a scalar number (Python, numpy, torch or jax); found "
                f"{describe(value)}{reason}.{hint}"
            )
        out[name] = float(number)
    return out
