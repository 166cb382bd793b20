"""The start of a TDS session: PRELOGIN (encryption, TLS handshake), then LOGIN7.

Kept apart from the request loop because it is where a client's settings are accepted or
refused, with the errors SQL Server gives (18456, 4060) and the encryption it negotiates.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass

from . import engine, schema, tds
from .faults import FaultFile, stall
from .planner import Planner
from .settings import ServerConfig
from .transport import Transport

log = logging.getLogger("standin.server")

MAX_PACKET = 32767


@dataclass
class LoggedIn:
    """What a successful login leaves to the session: its TDS version, data and state."""

    tds_version: int
    db: sqlite3.Connection
    planner: Planner
    session: engine.Session


def login(link: Transport, config: ServerConfig, faults: FaultFile) -> LoggedIn | None:
    """Negotiate encryption and check the login; None when the client was turned away."""
    ptype, payload = link.read_message()
    login_only = encrypted = False
    if ptype == tds.PKT_PRELOGIN:
        options = tds.parse_prelogin(payload)
        client = (options.get(tds.OPTION_ENCRYPTION) or bytes([tds.ENCRYPT_NOT_SUP]))[0]
        answer, terminate = tds.answer_encryption(config.encryption, client)
        link.reply(tds.build_prelogin_reply(answer))
        if terminate:
            log.info("spid %d: client encryption %#x, server %s: connection terminated",
                     link.spid, client, config.encryption)
            return None
        if answer != tds.ENCRYPT_NOT_SUP:
            handshake = link.start_tls()
            log.info("spid %d: TLS up (%s, %s)", link.spid, handshake.version(),
                     (handshake.cipher() or ("?",))[0])
            login_only = answer == tds.ENCRYPT_OFF
            encrypted = not login_only
        ptype, payload = link.read_message()
    elif config.encryption == "on":
        raise tds.ProtocolError("encryption is forced and the client sent no PRELOGIN")
    if login_only:
        link.tls = None  # ENCRYPT_OFF: the client dropped TLS after the login packet
    if ptype != tds.PKT_LOGIN7:
        raise tds.ProtocolError(f"expected LOGIN7, got packet type {ptype:#x}")
    request = tds.parse_login7(payload)
    v = request.tds_version
    if not (0x70 <= (v >> 24) <= 0x74):
        v = tds.TDS74
    current = faults.current()
    if current.hang:
        stall(link, faults)
    if current.delay:
        time.sleep(current.delay)
    failed = tds.token_message(18456, f"Login failed for user '{request.user}'.", v, severity=14)
    if current.refuse_logins or request.user.lower() != config.user.lower() \
            or request.password != config.password:
        log.info("spid %d: login refused for user %r", link.spid, request.user)
        link.reply(failed, tds.token_done(tds.DONE_ERROR, 0, v))
        return None
    database = request.database or config.database
    known = [config.database, *engine.KNOWN_EXTRA_DATABASES]
    match = next((d for d in known if d.lower() == database.lower()), None)
    if match is None:
        message = f'Cannot open database "{database}" requested by the login. The login failed.'
        link.reply(tds.token_message(4060, message, v, severity=11), failed,
                   tds.token_done(tds.DONE_ERROR, 0, v))
        return None
    requested = request.packet_size or 4096
    link.packet_size = max(512, min(config.packet_size or requested, MAX_PACKET))
    db = schema.connect(config.db_path, readonly=True)
    try:
        _describe_connection(db, link.spid, encrypted)
    except BaseException:
        db.close()
        raise
    session = engine.Session(database=match, user=request.user, spid=link.spid,
                             server_database=config.database, encrypted=encrypted)
    link.reply(*_welcome(v, match, link.packet_size, requested))
    log.info("spid %d: %s logged in (TDS %08x, packet %d, app %r)", link.spid, request.user,
             v, link.packet_size, request.app_name)
    return LoggedIn(tds_version=v, db=db, planner=Planner(db), session=session)


def _welcome(v: int, database: str, packet_size: int, requested: int) -> list[bytes]:
    """The tokens that accept a login: database, collation, language, LOGINACK, packet size."""
    tokens = [
        tds.token_envchange(tds.ENV_DATABASE, database, "master"),
        tds.token_message(5701, f"Changed database context to '{database}'.", v, severity=0,
                          state=2, info=True),
    ]
    if tds.at_least(v, tds.TDS71):
        tokens.append(tds.token_envchange_collation(tds.COLLATION))
    tokens += [
        tds.token_envchange(tds.ENV_LANGUAGE, "us_english", ""),
        tds.token_message(5703, "Changed language setting to us_english.", v, severity=0, info=True),
        tds.token_loginack(v),
        tds.token_envchange(tds.ENV_PACKETSIZE, str(packet_size), str(requested)),
        tds.token_done(tds.DONE_FINAL, 0, v),
    ]
    return tokens


def _describe_connection(db: sqlite3.Connection, spid: int, encrypted: bool) -> None:
    """sys.dm_exec_connections for this session, as a temp table the planner can read."""
    db.execute("PRAGMA query_only = OFF")
    db.execute("CREATE TEMP TABLE dm_exec_connections (session_id INTEGER, "
               "net_transport TEXT, protocol_type TEXT, encrypt_option TEXT, "
               "auth_scheme TEXT)")
    db.execute("INSERT INTO dm_exec_connections VALUES (?, 'TCP', 'TSQL', ?, 'SQL')",
               (spid, "TRUE" if encrypted else "FALSE"))
    db.execute("PRAGMA query_only = ON")
