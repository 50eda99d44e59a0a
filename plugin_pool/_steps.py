"""Running plugin code under a timeout: lifecycle steps in their own thread, coroutines on one host loop.

A sync step that hangs cannot be interrupted in-process: its thread is abandoned (a daemon) and the plugin
goes to Failed. Coroutines are cancelled at their timeout.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import Any

__all__ = ["StepRunner", "StepTimeout"]


class StepTimeout(Exception):
    """Raised by StepRunner when plugin code did not finish in time (the caller maps it to its own error)."""


class StepRunner:
    """Runs sync callables in fresh daemon threads and coroutines on a private event loop thread.

    Thread-safe. The loop thread starts on first use. ``close`` is idempotent and blocks up to 2 s.
    """

    def __init__(self, name: str = "plugin-pool") -> None:
        self._name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def run(self, func: Callable[..., Any], *args: Any, timeout_s: float) -> Any:
        """Call ``func(*args)``; await the result if it is awaitable. Raise StepTimeout past ``timeout_s``."""
        if inspect.iscoroutinefunction(func):
            return self.run_coroutine(func(*args), timeout_s)
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["result"] = func(*args)
            except BaseException as exc:  # handed to the caller's thread
                box["error"] = exc

        thread = threading.Thread(target=target, name=f"{self._name}-step", daemon=True)
        thread.start()
        thread.join(timeout_s)
        if thread.is_alive():
            raise StepTimeout(timeout_s)
        if "error" in box:
            raise box["error"]
        result = box.get("result")
        if inspect.isawaitable(result):
            return self.run_coroutine(_as_coroutine(result), timeout_s)
        return result

    def run_coroutine(self, coro: Coroutine[Any, Any, Any], timeout_s: float | None) -> Any:
        """Run ``coro`` on the runner's loop and block for its result; cancel it and raise StepTimeout late."""
        loop = self._ensure_loop()
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout_s)
        except FutureTimeoutError:
            # The same class as the builtin TimeoutError: the coroutine itself may have raised it.
            if not future.done():
                future.cancel()
                raise StepTimeout(timeout_s) from None
            return future.result()  # it finished meanwhile, or raised a TimeoutError of its own

    def get_loop(self) -> asyncio.AbstractEventLoop:
        """The runner's event loop (its thread starts on first use). Thread-safe; never blocks for long."""
        return self._ensure_loop()

    def close(self) -> None:
        """Stop the loop thread if it was started. Idempotent."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(2.0)
            if not thread.is_alive():
                loop.close()

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is not None:
            return loop
        with self._lock:
            if self._loop is None:
                new_loop = asyncio.new_event_loop()
                ready = threading.Event()

                def serve() -> None:
                    asyncio.set_event_loop(new_loop)
                    new_loop.call_soon(ready.set)
                    new_loop.run_forever()

                thread = threading.Thread(target=serve, name=f"{self._name}-loop", daemon=True)
                thread.start()
                ready.wait(5.0)
                self._loop, self._thread = new_loop, thread
            return self._loop


async def _as_coroutine(awaitable: Any) -> Any:
    return await awaitable
