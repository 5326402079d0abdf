"""Preemption signals: the `save_on_signals` option (checked the same way by the core and adapters)
and the handlers that count the signals owed a save."""

from __future__ import annotations

import contextlib
import signal
import threading
from types import FrameType
from typing import Any

# No process can catch these: the kernel stops or kills it without running any handler.
_UNCATCHABLE = {int(signal.SIGKILL): "SIGKILL", int(signal.SIGSTOP): "SIGSTOP"}


def check_save_on_signals(value: Any, *, caller: str = "CheckpointManager") -> tuple[int, ...]:
    """The signals to save on, from a `save_on_signals` option, or a clear error.

    Accepts an iterable of signals (`(signal.SIGTERM,)`), a single signal (`signal.SIGTERM`
    or its number) as a convenience, or None / `()` for none.

    Args:
        value: the option as the user gave it.
        caller: who was given it, for the message (e.g. "CkptHook").

    Returns:
        The signal numbers, without duplicates, in the order given.

    Raises:
        TypeError: `value` is a string, or neither a signal nor an iterable of signals.
        ValueError: a signal that cannot be caught (SIGKILL, SIGSTOP) or that this platform
            does not have, or signals requested outside the main thread.
    """
    option = f"{caller}(save_on_signals={_brief(value)})"
    if value is None:
        return ()
    if isinstance(value, str | bytes):
        name = value if isinstance(value, str) and value.isidentifier() else "SIGTERM"
        raise TypeError(
            f"{option}: got a string; expected signals such as (signal.SIGTERM,). "
            f"HINT: pass save_on_signals=(signal.{name.upper()},) (import signal)."
        )
    if isinstance(value, int) and not isinstance(value, bool):
        items: tuple[Any, ...] = (value,)
    else:
        try:
            items = tuple(value)
        except TypeError:
            raise TypeError(
                f"{option}: got {type(value).__name__}; expected a signal or a tuple of signals. "
                "HINT: save_on_signals=(signal.SIGTERM,)."
            ) from None
    valid = {int(s) for s in signal.valid_signals()}
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int):
            raise TypeError(
                f"{option}: {_brief(item)} is not a signal; expected signal numbers such as "
                "signal.SIGTERM. HINT: save_on_signals=(signal.SIGTERM,)."
            )
        if int(item) in _UNCATCHABLE:
            raise ValueError(
                f"{option}: {_UNCATCHABLE[int(item)]} cannot be caught by any process, so nothing "
                "can be saved when it arrives. HINT: use signal.SIGTERM, which schedulers send "
                "before SIGKILL; a SIGKILL loses only the work since the last commit."
            )
        if int(item) not in valid:
            raise ValueError(
                f"{option}: {item} is not a signal on this platform (valid: 1 to {max(valid)}). "
                "HINT: use a name from the signal module, e.g. signal.SIGTERM or signal.SIGUSR1."
            )
    if items and threading.current_thread() is not threading.main_thread():
        raise ValueError(
            f"{option} in thread {threading.current_thread().name!r}: Python runs signal "
            "handlers only in the main thread. HINT: create it in the main thread, or pass "
            "save_on_signals=() here and watch for the signal in the main thread."
        )
    return tuple(dict.fromkeys(int(item) for item in items))


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class SaveSignals:
    """The `save_on_signals` handlers of one manager, and the signals they owe a save.

    Signals are counted, not flagged: one that arrives during a save is still owed a save.
    A save takes `count` when it starts and passes it to `answered` when it returns.
    """

    def __init__(self, signals: tuple[int, ...]) -> None:
        self.count = 0
        self.saved = 0  # the signal count the latest completed save has answered
        self.last: int | None = None
        self.closed = False
        self._previous: dict[int, Any] = {}
        for sig in signals:  # checked by check_save_on_signals: catchable, in the main thread
            self._previous[sig] = signal.signal(sig, self._on_signal)

    @property
    def pending(self) -> bool:
        """A signal arrived that no completed save has answered yet."""
        return self.count > self.saved

    def answered(self, count: int) -> None:
        """A save that started when `count` signals had arrived returned."""
        self.saved = count

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        previous = self._previous.get(signum)
        if self.closed:
            # Called after close: by a later handler that chains to this one (which acts on
            # the signal itself), or because a framework put this one back: then act as the
            # handler before it.
            installed = signal.getsignal(signum) == self._on_signal
            if installed and previous in (signal.SIG_DFL, None):
                signal.signal(signum, signal.SIG_DFL)
                signal.raise_signal(signum)
            elif callable(previous):
                previous(signum, frame)
            return
        self.last = signum
        self.count += 1
        # Python's SIGINT handler would raise KeyboardInterrupt before the save; others chain.
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signum, frame)

    def close(self) -> None:
        """Put the previous handlers back (unless another was installed after ours)."""
        self.closed = True
        for sig, handler in self._previous.items():
            if signal.getsignal(sig) == self._on_signal:  # not one installed after ours
                # Skip the handlers of managers closed meanwhile (closed out of order).
                while isinstance(owner := getattr(handler, "__self__", None), SaveSignals) and (
                    owner.closed
                ):
                    handler = owner._previous.get(sig, signal.SIG_DFL)
                with contextlib.suppress(ValueError, TypeError):
                    signal.signal(sig, handler)
