"""CURVE encryption and authentication for sockets that cross hosts.

Off by default (``zmqvision run`` and everything on 127.0.0.1 stay plain); on with
``--curve DIR`` on ``sink``, ``ventilate``, ``worker`` and ``watch``. DIR is a key
directory made with ``zmqvision keys``:

    DIR/server.key, server.key_secret   the key pair of the binding roles (sink, ventilator);
                                        on connecting hosts only server.key (public)
    DIR/client.key, client.key_secret   this host's own key pair, for connecting sockets
                                        (worker, watch, and a ventilator's to the sink)
    DIR/allowed/ROLE/*.key              public keys of the clients a binding role lets in, per
                                        role: ventilator, worker, watcher
    DIR/allowed/*.key                   (older directories) keys allowed as every role

A key authorises a role, not just a peer. A binding role makes every bound socket a CURVE
server behind a ZAP handler (pyzmq's ``ThreadAuthenticator``) that admits only the roles
that socket serves: the ventilator's tiles socket, worker keys; the sink's results socket,
ventilator and worker keys; the sink's events socket, every role (watchers may only
subscribe). The handler gives each connection its key's roles as ZAP user id, which every
message then carries (``peer_roles``): the sink takes a job's control messages (zv.job,
zv.image, zv.job_end, zv.withdraw) only from ventilator keys, results from worker (and
ventilator) keys, heartbeats from worker keys, so a worker's key can never end a job.

A key not allowed there never completes the handshake, so no tile reaches it and nothing
it sends is read; a plain-text peer is refused by the handshake itself (the mechanisms
differ), and both ends log it (``HandshakeLog``). ``allowed/`` is read again (at most once
a second) when an unknown key knocks, so a new worker's key can be added while a job
runs. The ZAP handler must be running before the first bind: a CURVE server without one
would let any client in.

One server key pair serves the whole cluster (copy ``server.key_secret`` to the sink's
and the ventilator's hosts when they differ), so a worker needs one public key to trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import zmq
import zmq.auth
from zmq.utils import z85

from zmqvision.sockets import is_loopback

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger("zmqvision.security")

SERVER, CLIENT, ALLOWED = "server", "client", "allowed"
ZAP_DOMAIN = "zmqvision"
VENTILATOR, WORKER, WATCHER = "ventilator", "worker", "watcher"
ROLES = (VENTILATOR, WORKER, WATCHER)
EVERY_ROLE = frozenset(ROLES)


def zap_domain(roles: frozenset[str]) -> str:
    """The ZAP domain of a socket that admits ``roles``: the handler reads them back."""
    return f"{ZAP_DOMAIN}:{','.join(sorted(roles))}"


def _domain_roles(domain: str) -> frozenset[str]:
    _, _, roles = domain.partition(":")
    return frozenset(roles.split(",")) if roles else EVERY_ROLE


def peer_roles(frame: zmq.Frame) -> frozenset[str]:
    """The roles of the key a message came with (its ZAP user id, set by the handler of
    a socket made by ``secure``); empty when there is none to read."""
    try:
        user = frame.get("User-Id") or ""
    except zmq.ZMQError:
        return frozenset()
    return frozenset(user.split(",")) & EVERY_ROLE


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


def allow(directory: str | Path, public_key: str | Path, role: str | None = None) -> Path:
    """Copy a client's public key file into ``directory/allowed/ROLE/`` (without a role,
    into ``allowed/`` itself: every role, as older directories have it)."""
    src = Path(public_key)
    pub, sec = _load(src, secret=False)
    if sec:
        raise CurveKeyError(f"{src} holds a secret key: give the public .key file")
    if role is not None and role not in ROLES:
        raise CurveKeyError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    dest_dir = Path(directory) / ALLOWED / (role or "")
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

    def server(self, sock: zmq.Socket, roles: frozenset[str] = EVERY_ROLE) -> None:
        """Make a socket that binds a CURVE server admitting keys of ``roles`` (call
        before bind)."""
        if self.server_secret is None:
            raise CurveKeyError(f"{self.directory}: no server secret key on this host")
        sock.curve_server = True
        sock.curve_secretkey = self.server_secret
        sock.curve_publickey = self.server_public
        sock.zap_domain = zap_domain(roles).encode()

    def client(self, sock: zmq.Socket) -> None:
        """Make a socket that connects a CURVE client of the cluster's server key (call
        before connect)."""
        if self.client_secret is None or self.client_public is None:
            raise CurveKeyError(f"{self.directory}: no client key pair on this host")
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.client_public
        sock.curve_secretkey = self.client_secret

    def authenticator(self, ctx: zmq.Context,
                      domains: tuple[frozenset[str], ...] = (EVERY_ROLE,)) -> ThreadAuthenticator:
        """Start the ZAP handler that admits the keys in ``allowed/`` by role, for
        sockets of each role set in ``domains``; stop it before ``ctx.term()``."""
        # Imported here: it pulls in asyncio (20-40 ms), which every run without CURVE
        # would otherwise pay at start-up.
        from zmq.auth.thread import ThreadAuthenticator

        allowed = AllowList(self.directory / ALLOWED)

        class RoleAuthenticator(ThreadAuthenticator):
            """Gives each admitted connection its key's roles as ZAP user id."""

            def curve_user_id(self, client_public_key: bytes) -> str:
                return ",".join(sorted(allowed.roles(z85.encode(client_public_key))))

        auth = RoleAuthenticator(ctx, log=logging.getLogger("zmqvision.zap"))
        auth.start()
        for roles in set(domains):
            auth.configure_curve_callback(zap_domain(roles), allowed)
        return auth


class AllowList:
    """The ZAP callback: a client key is let in when its public key file is in the
    directory of a role the socket serves (``allowed/ROLE/``, or ``allowed/`` itself for
    every role). Unknown keys make it read the directory again (at most once a second, so
    a flood of wrong keys costs nothing), and each refused key is logged once, by name."""

    def __init__(self, directory: Path, reload_s: float = 1.0) -> None:
        self.directory = directory
        self.reload_s = reload_s
        self.keys: dict[bytes, frozenset[str]] = {}
        self.loaded_at = float("-inf")
        self.refused: set[tuple[bytes, str]] = set()
        self.warned_every_role = False
        self._reload()

    def _reload(self) -> None:
        keys: dict[bytes, set[str]] = {}
        every = 0
        for sub, roles in (("", ROLES), *((r, (r,)) for r in ROLES)):
            for path in sorted((self.directory / sub).glob("*.key")):
                try:
                    key = zmq.auth.load_certificate(path)[0]
                except (ValueError, OSError) as exc:
                    log.warning("ignoring %s: %s", path, exc)
                    continue
                keys.setdefault(key, set()).update(roles)
                every += not sub
        self.keys = {k: frozenset(v) for k, v in keys.items()}
        self.loaded_at = time.monotonic()
        if every and not self.warned_every_role:
            self.warned_every_role = True
            log.warning("%d keys in %s/ are allowed as every role (ventilator, worker, "
                        "watcher): a worker's key could end a job. Restrict each to its role "
                        "with `zmqvision keys allow %s KEY --role worker` (or ventilator, "
                        "watcher) and remove it from %s/", every, self.directory,
                        self.directory.parent, self.directory)

    def roles(self, key: bytes) -> frozenset[str]:
        """The roles a z85 public key is allowed (empty: none)."""
        return self.keys.get(key, frozenset())

    def callback(self, domain: str, key: bytes) -> bool:
        wanted = _domain_roles(domain)
        if self.roles(key) & wanted:
            return True
        if time.monotonic() - self.loaded_at >= self.reload_s:
            self._reload()
            if self.roles(key) & wanted:
                return True
        if (key, domain) not in self.refused:
            self.refused.add((key, domain))
            have = self.roles(key)
            name = key.decode(errors="replace")
            if not have:
                log.warning("refused a peer whose CURVE key %s is not in %s/", name,
                            self.directory)
            else:
                log.warning("refused a peer whose CURVE key %s is allowed as %s, not as %s "
                            "(`zmqvision keys allow %s KEY --role ROLE`)", name,
                            "/".join(sorted(have)), " or ".join(sorted(wanted)),
                            self.directory.parent)
        return False



# What a failed handshake looks like in libzmq's socket monitor (either side).
_HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
HANDSHAKE_LOG_EVERY_S = 60.0
_MECHANISM_MISMATCH = getattr(zmq, "PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH", 0x11000002)


class HandshakeLog:
    """Says, in the log, when a handshake fails, which libzmq otherwise does in silence:

    - a client (``side="curve client"``) whose CURVE key a server refuses, or whose server
      speaks plain text: libzmq gives up on such a connection for good (no reconnect), so
      a worker with a wrong key would sit idle without a word;
    - a plain-text client (``side="plain client"``) whose server speaks CURVE;
    - a CURVE server (``side="server"``) that a plain-text peer (or another mechanism)
      knocked on. libzmq 4.3's monitor names only the bound endpoint, not the peer (that
      needs its draft monitor API), so this is logged once per endpoint and then at most
      once a minute with the count meanwhile; a refused *key* is named by the ZAP handler.

    A thread of its own reads the sockets' monitor events (its PAIR sockets live and die
    in that thread); ``close()`` stops it and turns the monitors off, before the sockets
    close."""

    def __init__(self, ctx: zmq.Context, socks: tuple[zmq.Socket, ...],
                 side: str = "curve client") -> None:
        self.socks = socks
        self.side = side
        self.addrs = [f"inproc://zv-handshake-{id(self):x}-{i}" for i in range(len(socks))]
        # MONITOR_STOPPED: ``close()`` turns the monitors off, which wakes the thread.
        events = _HANDSHAKE_EVENTS | zmq.EVENT_MONITOR_STOPPED
        if side == "server":  # a refused key is the ZAP handler's to name
            events &= ~zmq.EVENT_HANDSHAKE_FAILED_AUTH
        elif side == "plain client":  # no auth to fail; a cut connection is no news
            events = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_MONITOR_STOPPED
        for sock, addr in zip(socks, self.addrs, strict=True):
            sock.monitor(addr, events)
        self.ctx = ctx
        # The monitors' PAIR peers are connected here, before anyone can close: libzmq
        # sends MONITOR_STOPPED to the PAIR when a monitor is turned off, and blocks (with
        # the GIL held) while that PAIR has no peer, so a thread still starting would never
        # get to connect (seen: `run` hung at exit). The thread only reads them.
        self._pairs = []
        for addr in self.addrs:
            pair = ctx.socket(zmq.PAIR)
            pair.linger = 0
            pair.connect(addr)
            self._pairs.append(pair)
        self.seen: dict[tuple[str, int], tuple[float, int]] = {}  # → (logged at, since)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zv-handshake", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            poller = zmq.Poller()
            for pair in self._pairs:
                poller.register(pair, zmq.POLLIN)
            while not self._stop.is_set():
                for pair, _ in poller.poll(200):
                    try:
                        event = monitor_event(pair.recv_multipart(flags=zmq.NOBLOCK))
                    except (zmq.Again, ValueError):
                        continue
                    self.note(event)
        finally:
            for pair in self._pairs:
                pair.close(linger=0)

    def note(self, event: dict, now: float | None = None) -> None:
        """Log one monitor event, unless the same failure at the same endpoint was
        logged less than a minute ago (then it is counted for the next line)."""
        if event.get("event") == zmq.EVENT_MONITOR_STOPPED:
            return
        now = time.monotonic() if now is None else now
        # A server's failures all say the same (libzmq gives a protocol error or only an
        # errno); a client's say different things by kind.
        kind = 0 if self.side == "server" else int(event.get("event", 0))
        key = (str(event.get("endpoint", "")), kind)
        logged_at, since = self.seen.get(key, (float("-inf"), 0))
        if now - logged_at < HANDSHAKE_LOG_EVERY_S:
            self.seen[key] = (logged_at, since + 1)
            return
        self.seen[key] = (now, 0)
        text = handshake_message(event, self.side)
        if since:
            text += f" ({since} more since the last such line)"
        if self.side == "server":
            log.warning("%s", text)
        else:
            log.error("%s", text)

    def close(self) -> None:
        self._stop.set()
        for sock in self.socks:  # each sends MONITOR_STOPPED: the thread wakes at once
            with contextlib.suppress(zmq.ZMQError):
                sock.disable_monitor()
        self._thread.join(5)


def monitor_event(frames: list[bytes]) -> dict:
    """A libzmq monitor message (frame 0: event id u16 and value u32, little-endian; frame
    1: the endpoint), read here rather than with ``zmq.utils.monitor``, which imports
    ``zmq.asyncio`` and with it asyncio (20 ms of every role's start-up)."""
    if len(frames) != 2 or len(frames[0]) != 6:
        raise ValueError("not a monitor message")
    event, value = struct.unpack("<HI", frames[0])
    return {"event": event, "value": value, "endpoint": frames[1]}


def handshake_message(event: dict, side: str = "curve client") -> str:
    """One monitor event as a sentence a user can act on."""
    where = event.get("endpoint", b"")
    where = where.decode(errors="replace") if isinstance(where, bytes) else str(where)
    if side == "server":
        return (f"refused a peer on {where} that does not speak CURVE (plain text, or "
                f"another mechanism; libzmq does not say which address): start it with "
                f"--curve and this cluster's keys")
    if side == "plain client":
        if event.get("value") != _MECHANISM_MISMATCH:
            return (f"no handshake with {where}: libzmq protocol error "
                    f"{int(event.get('value') or 0):#x} (another program on that port?)")
        return (f"no handshake with {where}: it speaks CURVE and this process plain text; "
                f"start this process with --curve DIR (the cluster's server.key and an "
                f"allowed client key)")
    if event.get("event") == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return (f"{where} refused this host's CURVE key (status {event.get('value')}): add "
                f"its client.key to the server's allowed/ for this role (`zmqvision keys "
                f"allow DIR client.key --role ROLE`), then restart this process")
    return (f"no secure handshake with {where}: it does not speak CURVE with this key pair "
            f"(is it started with --curve, and is server.key the cluster's?)")


@dataclass
class Secured:
    """What ``secure`` set up, to undo in order: ``close()`` before closing the sockets."""

    auth: ThreadAuthenticator | None
    handshakes: tuple[HandshakeLog, ...] = ()

    def close(self) -> None:
        for handshakes in self.handshakes:
            handshakes.close()
        if self.auth is not None:
            self.auth.stop()


Server = zmq.Socket | tuple[zmq.Socket, tuple[str, ...]]


def secure(
    ctx: zmq.Context,
    curve_dir: str | Path | None,
    *,
    servers: tuple[Server, ...] = (),
    clients: tuple[zmq.Socket, ...] = (),
) -> Secured | None:
    """What every role calls once, before it binds or connects: with a key directory,
    make ``servers`` CURVE servers behind a running ZAP handler and ``clients`` CURVE
    clients, with failed handshakes logged on both; without one, plain text, and only a
    plain client's failed handshake (its server speaks CURVE) is logged.

    A server is a socket (every role may connect) or ``(socket, roles)``: only keys
    allowed one of ``roles`` complete the handshake, and each message it receives
    carries its key's roles (``peer_roles``). Returns what to ``close()`` before the
    sockets close, or None."""
    if curve_dir is None:
        return Secured(None, (HandshakeLog(ctx, clients, "plain client"),)) if clients else None
    pairs = []
    for server in servers:
        sock, roles = server if isinstance(server, tuple) else (server, ROLES)
        pairs.append((sock, frozenset(roles)))
    curve = Curve.load(curve_dir, binds=bool(pairs), connects=bool(clients))
    for sock in clients:
        curve.client(sock)
    auth = curve.authenticator(ctx, tuple(r for _, r in pairs)) if pairs else None
    for sock, roles in pairs:
        curve.server(sock, roles)
    logs = []
    if clients:
        logs.append(HandshakeLog(ctx, clients, "curve client"))
    if pairs:
        logs.append(HandshakeLog(ctx, tuple(s for s, _ in pairs), "server"))
    return Secured(auth, tuple(logs))
