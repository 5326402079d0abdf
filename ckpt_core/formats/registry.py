"""The format registry: names to `Format` objects, the built-ins registered on first use."""

from __future__ import annotations

from typing import Any

from .. import _tree
from ..errors import CheckpointError
from .protocol import Format
from .refusal import Refusal

_REGISTRY: dict[str, Format] = {}
_BUILTIN_FORMATS = frozenset({"tree", "torch", "orbax", "pickle", "dcp"})


def register_format(fmt: Format, *, replace: bool = False) -> None:
    """Make `fmt` available by `fmt.name` to `CheckpointManager(format=...)` and to restore.

    A format that also has `describe(reader) -> TreeListing` (see `DescribableFormat`) is
    shown leaf by leaf by `ckpt show`; one without it is shown as its files.

    Raises:
        TypeError: `fmt` lacks a member of the `Format` protocol.
        ValueError: another format is registered under `fmt.name` and `replace` is False.
    """
    if not isinstance(fmt, Format):
        raise TypeError(
            f"{fmt!r} is not a Format: it needs a `name` and the methods accepts, snapshot, "
            "write and read (see ckpt_core.Format)."
        )
    if fmt.name in _BUILTIN_FORMATS and not replace:
        _load_builtin_formats()  # so a built-in's name is taken even before its first use
    if fmt.name in _REGISTRY and not replace and _REGISTRY[fmt.name] is not fmt:
        raise ValueError(
            f"a format named {fmt.name!r} is already registered; pass replace=True to override it."
        )
    _REGISTRY[fmt.name] = fmt


def get_format(name: str) -> Format:
    """The format registered as `name`.

    Raises:
        CheckpointError: no format of that name is registered.
    """
    _load_builtin_formats()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise CheckpointError(
            f"unknown checkpoint format {name!r}; registered formats: {sorted(_REGISTRY)}. "
            "HINT: a custom format must be registered with ckpt_core.register_format() "
            "before restoring steps written with it."
        ) from None


def _load_builtin_formats() -> None:
    # Imported here, on first use: the built-in modules import neither this module nor each
    # other, and `import ckpt_core` stays free of numpy-heavy format code until a save.
    if _REGISTRY.keys() >= _BUILTIN_FORMATS:
        return
    from .dcp import DcpFormat
    from .orbax import OrbaxFormat
    from .pickle import PickleFormat
    from .torch import TorchFormat
    from .tree import TreeFormat

    builtins: tuple[Format, ...] = (
        TreeFormat(),
        TorchFormat(),
        OrbaxFormat(),
        PickleFormat(),
        DcpFormat(),
    )
    for fmt in builtins:
        _REGISTRY.setdefault(fmt.name, fmt)  # a user's replacement, registered first, stays


def auto_format(state: Any) -> Format:
    """`tree` when the state fits it; `torch` for other torch checkpoints that
    `torch.load(weights_only=True)` gives back; otherwise an error naming the leaf and the fix.

    Raises:
        TypeError: neither format can save `state` so that it restores.
    """
    _load_builtin_formats()
    for name in ("tree", "torch"):
        if _REGISTRY[name].accepts(state):
            return _REGISTRY[name]
    from .torch import has_torch_tensor, restore_refusal
    from .tree import storable_refusal

    problem = "cannot save this state"
    tree_says = storable_refusal(state) or Refusal("", "", "the tree format refused it.")
    torch_says = restore_refusal(state) if has_torch_tensor(state) else None
    if torch_says is None:
        raise TypeError(f"format='auto' {problem}: {tree_says.message}")
    if torch_says.path == tree_says.path:  # one culprit: the torch message names every fix
        raise TypeError(f"format='auto' {problem}: {torch_says.message}")
    raise TypeError(
        f"format='auto' {problem}: {tree_says.message} (Nor can the torch format: "
        f"torch.load(weights_only=True) would refuse {torch_says.found} at {torch_says.path!r}.)"
    )


def resolve_format(fmt: str | Format, state: Any) -> Format:
    """The format object for a `format=` argument: "auto" picks from `state`.

    Raises:
        TypeError: `state` holds abstract leaves (`jax.eval_shape` output, torch `meta`
            tensors), which no format can save.
    """
    _tree.check_concrete(state)
    if fmt == "auto":
        return auto_format(state)
    return get_format(fmt) if isinstance(fmt, str) else fmt
