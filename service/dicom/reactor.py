"""Wake pynetdicom's two per-association loops when there is work, instead of every millisecond.

pynetdicom runs two threads per association that poll: the DUL reader sleeps 1 ms between looks at its
socket and its send queue, and the acceptor's reactor sleeps 1 ms between looks at its message queue.
Measured here, four idle associations cost 40 % of a core; under load that polling is a large share of the
CPU per stored object. We keep pynetdicom's loops and only change what their 1 ms sleep does:

- the DUL thread waits on its socket and on a pipe that ``send_pdu`` writes to, so it wakes the moment
  the peer sends data or our side has a PDU to send;
- the acceptor's reactor waits on an event set when the DIMSE layer has a new message for it.

Both waits are capped (``MAX_WAIT``), so timers (ARTIM, idle timeout) and releases are still seen promptly.
Any other sleep of pynetdicom, and any sleep of a thread that is not one of these, is a plain sleep.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
import types
import weakref
from typing import Any

from pynetdicom import association as _association
from pynetdicom import dul as _dul
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider

MAX_WAIT = 0.02
_REACTOR_DELAY = 0.001  # the delay pynetdicom's loops pass to time.sleep (dul._run_loop_delay, association)
_installed = False


def _close(fds: tuple[int, int]) -> None:
    for fd in fds:
        os.close(fd)


def _pipe(dul: Any) -> tuple[int, int]:
    fds = getattr(dul, "_usgi_wake_pipe", None)
    if fds is None:
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        dul._usgi_wake_pipe = fds = (r, w)
        # Closed with the DUL object, never earlier: a writer holding the object can always write safely.
        weakref.finalize(dul, _close, fds)
    return fds  # type: ignore[no-any-return]


def _dul_wait(dul: DULServiceProvider, delay: float) -> None:
    sock = getattr(getattr(dul, "socket", None), "socket", None)
    if sock is None or not dul.to_provider_queue.empty() or getattr(sock, "pending", lambda: 0)():
        time.sleep(delay)
        return
    r, _w = _pipe(dul)
    try:
        ready, _, _ = select.select([sock, r], [], [], MAX_WAIT)
    except (OSError, ValueError):
        time.sleep(delay)
        return
    if r in ready:
        # Wake-ups are one byte each: 512 drains any realistic backlog; a rest only means one more early wake.
        with contextlib.suppress(BlockingIOError):
            os.read(r, 512)


def _association_wait(assoc: Association, delay: float) -> None:
    wake = getattr(assoc, "_usgi_wake", None)
    if wake is None:
        time.sleep(delay)
        return
    if assoc.dimse.msg_queue.empty():
        wake.wait(MAX_WAIT)
    wake.clear()


def _sleep(delay: float) -> None:
    me = threading.current_thread()
    if delay == _REACTOR_DELAY:
        if isinstance(me, DULServiceProvider):
            _dul_wait(me, delay)
            return
        if isinstance(me, Association) and me.is_acceptor:
            _association_wait(me, delay)
            return
    time.sleep(delay)


def _time_with(sleep: Any) -> types.SimpleNamespace:
    # A stand-in for the `time` module inside pynetdicom's dul and association modules.
    ns = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("__")})
    ns.sleep = sleep
    return ns


def install() -> None:
    """Patch once per process (the DICOM receiver calls it when it is built)."""
    global _installed
    if _installed:
        return
    _installed = True
    _dul.time = _time_with(_sleep)  # type: ignore[attr-defined]
    _association.time = _time_with(_sleep)  # type: ignore[attr-defined]

    original_send_pdu = DULServiceProvider.send_pdu

    def send_pdu(self: DULServiceProvider, primitive: Any) -> None:
        original_send_pdu(self, primitive)
        fds = getattr(self, "_usgi_wake_pipe", None)
        if fds is not None:
            # A full pipe means the reader has wake-ups pending already.
            with contextlib.suppress(OSError):
                os.write(fds[1], b"\x01")

    DULServiceProvider.send_pdu = send_pdu  # type: ignore[method-assign]

    original_receive = DIMSEServiceProvider.receive_primitive

    def receive_primitive(self: DIMSEServiceProvider, primitive: Any) -> None:
        original_receive(self, primitive)
        wake = getattr(self.assoc, "_usgi_wake", None)
        if wake is not None:
            wake.set()

    DIMSEServiceProvider.receive_primitive = receive_primitive  # type: ignore[method-assign]

    original_init = Association.__init__

    def assoc_init(self: Association, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self._usgi_wake = threading.Event()  # type: ignore[attr-defined]

    Association.__init__ = assoc_init  # type: ignore[method-assign]

    original_kill = DULServiceProvider.kill_dul

    def kill_dul(self: DULServiceProvider) -> None:
        original_kill(self)
        if threading.current_thread() is not self:
            # Wake the reader so it sees at once that it must stop.
            fds = getattr(self, "_usgi_wake_pipe", None)
            if fds is not None:
                with contextlib.suppress(OSError):
                    os.write(fds[1], b"\x01")

    DULServiceProvider.kill_dul = kill_dul  # type: ignore[method-assign]
