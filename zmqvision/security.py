"""CURVE encryption and authentication for sockets that cross hosts.

Off by default (``zmqvision run`` and everything on 127.0.0.1 stay plain); on with
``--curve DIR`` on ``sink``, ``ventilate``, ``worker`` and ``watch``. DIR is a key
directory made with ``zmqvision keys``:

    DIR/server.key, server.key_secret   the key pair of the binding roles (sink, ventilator);
                                        on connecting hosts only server.key (public)
    DIR/client.key, client.key_secret   this host's own key pair, for connecting sockets
                                        (worker, watch, and a ventilator's to the sink)
    DIR/allowed/*.key                   public keys of the clients a binding role lets in

A binding role makes every bound socket a CURVE server and runs a ZAP handler (pyzmq's
``ThreadAuthenticator``) that admits exactly the client keys in ``allowed/``: a worker
whose key is not there never completes the handshake, so no tile reaches it and nothing
it sends is read; a plain-text peer is refused by the handshake itself (the mechanisms
differ). ``allowed/`` is read again (at most once a second) when an unknown key knocks,
so a new worker's key can be added while a job runs. The ZAP handler must be running
before the first bind: a CURVE server without one would let any client in.

One server key pair serves the whole cluster (copy ``server.key_secret`` to the sink's
and the ventilator's hosts when they differ), so a worker needs one public key to trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import zmq
import zmq.auth

from zmqvision.sockets import is_loopback

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger("zmqvision.security")

SERVER, CLIENT, ALLOWED = "server", "client", "allowed"
ZAP_DOMAIN = "zmqvision"


class CurveKeyError(OSError):
    """Keys missing or unreadable: raised with a message that says what to run."""


class ExposedError(OSError):
    """A non-loopback bind in plain text that nobody asked for (``--insecure``)."""


def exposure(endpoints: dict[str, str], curve: object, insecure: bool) -> None:
    """Check a role's bind endpoints (option name → endpoint) before binding: loopback,
    ipc and inproc are always fine, and so is anything under CURVE; a plain-text bind
    that other hosts can reach needs ``insecure`` and is logged as a warning, since
    anyone who reaches it can join as a worker, inject detections, read every event, and
    (on the sink) start jobs of their own. ExposedError otherwise, saying what to do."""
    if curve is not None:
        return
    exposed = {name: ep for name, ep in endpoints.items() if ep and not is_loopback(ep)}
    if not exposed:
        return
    where = ", ".join(f"{name} {ep}" for name, ep in exposed.items())
    if not insecure:
        raise ExposedError(
            f"{where}: reachable from other hosts in plain text. Use --curve DIR (see "
            f"`zmqvision keys new`, docs/hosts.md), bind 127.0.0.1, or pass --insecure on "
            f"a network you trust")
    log.warning("%s: plain text, reachable from other hosts (--insecure): anyone who can "
                "reach it can join, inject results and read every event; use --curve DIR "
                "across hosts", where)


def new_keys(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Create ``NAME.key`` (public) and ``NAME.key_secret`` in ``directory``; never
    overwrites (a replaced server key locks every worker out)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    public, secret = d / f"{name}.key", d / f"{name}.key_secret"
    if public.exists() or secret.exists():
        raise CurveKeyError(f"{public} already exists; remove it first to replace the key pair")
    zmq.auth.create_certificates(d, name)
    secret.chmod(0o600)
    return public, secret


def allow(directory: str | Path, public_key: str | Path) -> Path:
    """Copy a client's public key file into ``directory/allowed/``."""
    src = Path(public_key)
    pub, sec = _load(src, secret=False)
    if sec:
        raise CurveKeyError(f"{src} holds a secret key: give the public .key file")
    dest_dir = Path(directory) / ALLOWED
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / src.name
    if dest.exists() and dest.read_bytes() != src.read_bytes():
        dest = dest_dir / f"{hashlib.blake2b(pub, digest_size=4).hexdigest()}-{src.name}"
    shutil.copyfile(src, dest)
    return dest


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    if not path.exists():
        raise CurveKeyError(f"no key file {path}")
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (ValueError, OSError) as exc:
        raise CurveKeyError(f"{path} is not a ZeroMQ key file: {exc}") from None
    if secret and not secret_key:
        raise CurveKeyError(f"{path} has no secret key")
    return public, secret_key


@dataclass(frozen=True)
class Curve:
    """A loaded key directory: what one process needs to secure its sockets."""

    directory: Path
    server_public: bytes
    server_secret: bytes | None  # only where a role binds
    client_public: bytes | None
    client_secret: bytes | None  # only where a role connects

    @classmethod
    def load(cls, directory: str | Path, *, binds: bool, connects: bool) -> Curve:
        """Read the keys a role needs, or fail with a message that says which is missing
        and how to make it."""
        d = Path(directory)
        if not d.is_dir():
            raise CurveKeyError(f"--curve {d}: no such key directory (make one with "
                            f"`zmqvision keys new {d}`)")
        server_public, server_secret = _load(
            d / (f"{SERVER}.key_secret" if binds else f"{SERVER}.key"), secret=binds)
        client_public = client_secret = None
        if connects:
            client_public, client_secret = _load(d / f"{CLIENT}.key_secret", secret=True)
        if binds and not (d / ALLOWED).is_dir():
            raise CurveKeyError(f"--curve {d}: no {d / ALLOWED}/ of client keys to let in "
                            f"(add them with `zmqvision keys allow {d} CLIENT.key`)")
        return cls(d, server_public, server_secret, client_public, client_secret)

    def server(self, sock: zmq.Socket) -> None:
        """Make a socket that binds a CURVE server (call before bind)."""
        if self.server_secret is None:
            raise CurveKeyError(f"{self.directory}: no server secret key on this host")
        sock.curve_server = True
        sock.curve_secretkey = self.server_secret
        sock.curve_publickey = self.server_public
        sock.zap_domain = ZAP_DOMAIN.encode()

    def client(self, sock: zmq.Socket) -> None:
        """Make a socket that connects a CURVE client of the cluster's server key (call
        before connect)."""
        if self.client_secret is None or self.client_public is None:
            raise CurveKeyError(f"{self.directory}: no client key pair on this host")
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.client_public
        sock.curve_secretkey = self.client_secret

    def authenticator(self, ctx: zmq.Context) -> ThreadAuthenticator:
        """Start the ZAP handler that admits the keys in ``allowed/``; stop it before
        ``ctx.term()``."""
        # Imported here: it pulls in asyncio (20-40 ms), which every run without CURVE
        # would otherwise pay at start-up.
        from zmq.auth.thread import ThreadAuthenticator

        auth = ThreadAuthenticator(ctx, log=logging.getLogger("zmqvision.zap"))
        auth.start()
        auth.configure_curve_callback(ZAP_DOMAIN, AllowList(self.directory / ALLOWED))
        return auth


class AllowList:
    """The ZAP callback: a client key is let in when its public key file is in the
    directory. Unknown keys make it read the directory again (at most once a second, so
    a flood of wrong keys costs nothing), and each refused key is logged once, by name."""

    def __init__(self, directory: Path, reload_s: float = 1.0) -> None:
        self.directory = directory
        self.reload_s = reload_s
        self.keys: set[bytes] = set()
        self.loaded_at = float("-inf")
        self.refused: set[bytes] = set()
        self._reload()

    def _reload(self) -> None:
        keys = set()
        for path in sorted(self.directory.glob("*.key")):
            try:
                keys.add(zmq.auth.load_certificate(path)[0])
            except (ValueError, OSError) as exc:
                log.warning("ignoring %s: %s", path, exc)
        self.keys = keys
        self.loaded_at = time.monotonic()

    def callback(self, domain: str, key: bytes) -> bool:  # noqa: ARG002 - pyzmq's signature
        if key in self.keys:
            return True
        if time.monotonic() - self.loaded_at >= self.reload_s:
            self._reload()
            if key in self.keys:
                return True
        if key not in self.refused:
            self.refused.add(key)
            log.warning("refused a peer whose CURVE key %s is not in %s/",
                        key.decode(errors="replace"), self.directory)
        return False



# What a refused handshake looks like from the connecting side (libzmq's socket monitor).
_HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


class HandshakeLog:
    """Says, as an error in the log, when a peer refuses this process's CURVE key or
    speaks plain text: libzmq gives up on such a connection for good (no reconnect), so
    without it a worker with a wrong key would sit idle in silence.

    A thread of its own reads the sockets' monitor events (its PAIR sockets live and die
    in that thread); ``close()`` stops it and turns the monitors off, before the sockets
    close."""

    def __init__(self, ctx: zmq.Context, socks: tuple[zmq.Socket, ...]) -> None:
        self.socks = socks
        self.addrs = [f"inproc://zv-handshake-{id(self):x}-{i}" for i in range(len(socks))]
        for sock, addr in zip(socks, self.addrs, strict=True):
            sock.monitor(addr, _HANDSHAKE_EVENTS)
        self.ctx = ctx
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zv-handshake", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from zmq.utils.monitor import recv_monitor_message

        pairs = []
        try:
            for addr in self.addrs:
                pair = self.ctx.socket(zmq.PAIR)
                pair.linger = 0
                pair.connect(addr)
                pairs.append(pair)
            poller = zmq.Poller()
            for pair in pairs:
                poller.register(pair, zmq.POLLIN)
            while not self._stop.is_set():
                for pair, _ in poller.poll(200):
                    try:
                        event = recv_monitor_message(pair, flags=zmq.NOBLOCK)
                    except (zmq.Again, ValueError):
                        continue
                    log.error("%s", handshake_message(event))
        finally:
            for pair in pairs:
                pair.close(linger=0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for sock in self.socks:
            with contextlib.suppress(zmq.ZMQError):
                sock.disable_monitor()


def handshake_message(event: dict) -> str:
    """One monitor event as a sentence a user can act on."""
    where = event.get("endpoint", b"")
    where = where.decode(errors="replace") if isinstance(where, bytes) else str(where)
    if event.get("event") == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return (f"{where} refused this host's CURVE key (status {event.get('value')}): add "
                f"its client.key to the server's allowed/ (`zmqvision keys allow`), then "
                f"restart this process")
    return (f"no secure handshake with {where}: it does not speak CURVE with this key pair "
            f"(is it started with --curve, and is server.key the cluster's?)")


@dataclass
class Secured:
    """What ``secure`` set up, to undo in order: ``close()`` before closing the sockets."""

    auth: ThreadAuthenticator | None
    handshakes: HandshakeLog | None

    def close(self) -> None:
        if self.handshakes is not None:
            self.handshakes.close()
        if self.auth is not None:
            self.auth.stop()


def secure(
    ctx: zmq.Context,
    curve_dir: str | Path | None,
    *,
    servers: tuple[zmq.Socket, ...] = (),
    clients: tuple[zmq.Socket, ...] = (),
) -> Secured | None:
    """What every role calls once, before it binds or connects: with a key directory,
    make ``servers`` CURVE servers behind a running ZAP handler and ``clients`` CURVE
    clients whose refused handshakes are logged; without one, nothing (plain text).
    Returns what to ``close()`` before the sockets close, or None."""
    if curve_dir is None:
        return None
    curve = Curve.load(curve_dir, binds=bool(servers), connects=bool(clients))
    for sock in clients:
        curve.client(sock)
    auth = curve.authenticator(ctx) if servers else None
    for sock in servers:
        curve.server(sock)
    return Secured(auth, HandshakeLog(ctx, clients) if clients else None)
