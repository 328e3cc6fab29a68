"""Debian's coturn as a TURN server for calls: its configuration and its process.

It checks TURN REST API credentials (`use-auth-secret`, `static-auth-secret`), the ones
media.ice makes per session from the same secret. The secret goes into a configuration
file only its owner can read, never onto the command line (which any user's `ps` shows).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from aioice import stun

from parley.errors import ServiceError
from parley.services.child import ChildProcess

# What coturn logs (verbose) of an allocation, by its session number: made for a username, the
# packets relayed between it and its peers since the last report (now and then, and at its end),
# and its end.
_ALLOCATED = re.compile(r"session (?P<id>\d+): new, realm=<[^>]*>, username=<(?P<user>[^>]*)>")
_PEER_USAGE = re.compile(r"session (?P<id>\d+): peer usage: realm=<[^>]*>, username=<[^>]*>, rp=(?P<rp>\d+), rb=\d+, sp=(?P<sp>\d+)")
_CLOSED = re.compile(r"session (?P<id>\d+): closed ")


@dataclass(slots=True)
class Relay:
    """One relay (allocation) as coturn's log tells it.

    from_peers, to_peers: packets it received from its peers and sent to them (so far).
    """

    username: str
    from_peers: int = 0
    to_peers: int = 0
    closed: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnServerConfig:
    """One coturn listening on UDP and TCP.

    binary: the turnserver executable (Debian's coturn package; `make test` installs it).
    host, port: where it listens, and the only address it relays from (`relay-ip`).
    min_port, max_port: the UDP ports its relayed addresses take.
    realm: the realm of its long-term credentials.
    secret: the shared secret of the TURN REST API ([media] turn_secret); never in a repr.
    allow_loopback_peers: relay to 127.0.0.0/8 (coturn refuses by default: a relay to its own
        host's loopback is an attack on services listening there). For tests on one machine only.
    """

    binary: str = "/usr/bin/turnserver"
    host: str = "127.0.0.1"
    port: int = 3478
    min_port: int = 49152
    max_port: int = 65535
    realm: str = "parley"
    secret: str = field(repr=False)
    allow_loopback_peers: bool = False


def render(config: TurnServerConfig, *, log_path: Path, pid_path: Path, db_path: Path) -> str:
    """turnserver.conf for `config`."""
    lines = [
        "# Written by Parley at every start; edits are lost.",
        f"listening-ip={config.host}",
        f"relay-ip={config.host}",
        f"listening-port={config.port}",
        f"min-port={config.min_port}",
        f"max-port={config.max_port}",
        f"realm={config.realm}",
        "use-auth-secret",
        f"static-auth-secret={config.secret}",
        # TURN over TLS and DTLS needs certificates; plain UDP and TCP are what the tests use.
        "no-tls",
        "no-dtls",
        # No admin interfaces listening on fixed ports of their own.
        "no-cli",
        "no-multicast-peers",
        *(["allow-loopback-peers"] if config.allow_loopback_peers else []),
        f"userdb={db_path}",
        f"pidfile={pid_path}",
        f"log-file={log_path}",
        # One file, as named (no pid and date appended), and nothing on stdout.
        "simple-log",
        "verbose",
        "no-stdout-log",
    ]
    return "\n".join(lines) + "\n"


class TurnServer:
    """A supervised coturn for `config`; `relays()` reads from its log who was given a relay and
    how much it relayed."""

    def __init__(self, config: TurnServerConfig, *, state_dir: Path) -> None:
        self.config = config
        self.config_path = state_dir / "turnserver.conf"
        self.log_path = state_dir / "turnserver.log"
        self._state_dir = state_dir
        self._child: ChildProcess | None = None

    @property
    def url(self) -> str:
        """The TURN URL, over UDP, for [media] ice_servers."""
        return f"turn:{self.config.host}:{self.config.port}?transport=udp"

    async def start(self) -> None:
        """Write the configuration and start coturn; returns once it answers a STUN binding request."""
        if shutil.which(self.config.binary) is None:
            raise ServiceError(f"coturn not found at {self.config.binary}: `make test` installs it (apt-get install coturn)")
        self._state_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.touch(mode=0o600)
        os.chmod(self.config_path, 0o600)  # touch leaves an existing file's mode alone
        self.config_path.write_text(render(
            self.config, log_path=self.log_path, pid_path=self._state_dir / "turnserver.pid",
            db_path=self._state_dir / "turndb",
        ))
        # -n would ignore the file; -c reads only it (not /etc/turnserver.conf).
        argv = [self.config.binary, "-c", str(self.config_path)]
        # Its own log file is log_path; what it prints before opening that goes next to it.
        self._child = ChildProcess(
            "coturn", argv, probe=self._answering, log_path=self._state_dir / "turnserver.out", ready_timeout_s=10
        )
        await self._child.start()

    async def stop(self) -> None:
        """Stop coturn; safe to call twice."""
        if self._child is not None:
            await self._child.stop()
            self._child = None

    def relays(self) -> list[Relay]:
        """The relays coturn has allocated, in order, as its log says so far."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        relays: dict[str, Relay] = {}
        for line in lines:
            if match := _ALLOCATED.search(line):
                relays[match["id"]] = Relay(match["user"])
            elif (match := _PEER_USAGE.search(line)) and match["id"] in relays:
                relays[match["id"]].from_peers += int(match["rp"])
                relays[match["id"]].to_peers += int(match["sp"])
            elif (match := _CLOSED.search(line)) and match["id"] in relays:
                relays[match["id"]].closed = True
        return list(relays.values())

    async def _answering(self) -> bool:
        """A STUN binding request over UDP is answered (no credentials needed for that)."""
        loop = asyncio.get_running_loop()
        answered = loop.create_future()

        class Probe(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr) -> None:
                if not answered.done():
                    answered.set_result(data)

        transport, _ = await loop.create_datagram_endpoint(Probe, remote_addr=(self.config.host, self.config.port))
        try:
            request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
            transport.sendto(bytes(request))
            try:
                reply = stun.parse_message(await asyncio.wait_for(answered, 0.2))
            except (TimeoutError, ValueError):
                return False
            return reply.transaction_id == request.transaction_id
        except OSError:  # ICMP port unreachable, reported on the connected socket
            return False
        finally:
            transport.close()
