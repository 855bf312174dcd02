"""Kafka client security: TLS, mTLS and SASL for every client lapstream makes.

One ``KafkaSecurity`` value says how to reach the brokers; it is read from
(highest precedence first) command-line flags, ``LAPSTREAM_KAFKA_*``
environment variables and a config file (``--kafka-config`` or
``LAPSTREAM_KAFKA_CONFIG``), and it produces

* ``aiokafka_kwargs()``: keyword arguments for ``AIOKafkaProducer``,
  ``AIOKafkaConsumer`` and ``AIOKafkaAdminClient`` (replay, record, the
  admin client of ``ensure_topics``, the worker's own readers);
* ``faust_settings()``: ``broker_credentials`` (``faust.SSLCredentials`` or
  ``faust.SASLCredentials``) for the Faust worker.

Settings (environment name; flag; config-file key):

==================================  ==================================  ======================
LAPSTREAM_KAFKA_SECURITY_PROTOCOL   --kafka-security-protocol           security_protocol
LAPSTREAM_KAFKA_SASL_MECHANISM      --kafka-sasl-mechanism              sasl_mechanism
LAPSTREAM_KAFKA_SASL_USERNAME       --kafka-sasl-username               sasl_username
LAPSTREAM_KAFKA_SASL_PASSWORD       (none: no secret on a command line) sasl_password
LAPSTREAM_KAFKA_SASL_PASSWORD_FILE  --kafka-sasl-password-file          sasl_password_file
LAPSTREAM_KAFKA_SSL_CAFILE          --kafka-ssl-cafile                  ssl_cafile
LAPSTREAM_KAFKA_SSL_CERTFILE        --kafka-ssl-certfile                ssl_certfile
LAPSTREAM_KAFKA_SSL_KEYFILE         --kafka-ssl-keyfile                 ssl_keyfile
LAPSTREAM_KAFKA_SSL_KEY_PASSWORD    (none)                              ssl_key_password
LAPSTREAM_KAFKA_SSL_KEY_PASSWORD_FILE --kafka-ssl-key-password-file     ssl_key_password_file
LAPSTREAM_KAFKA_SSL_CHECK_HOSTNAME  --kafka-ssl-no-check-hostname       ssl_check_hostname
==================================  ==================================  ======================

The config file has one ``key = value`` a line (``#`` comments); Kafka's
dotted names (``security.protocol``) are read as the underscored ones. A
config file that holds a password itself must not be readable by group or
others.

Secrets (the SASL password, the key's password) are held in ``Secret``
objects whose ``repr``/``str`` never show the value; no error message of
this module contains a value read from a secret, a password file or a
config file line.
"""
from __future__ import annotations

import argparse
import logging
import os
import ssl
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
ENV_PREFIX = "LAPSTREAM_KAFKA_"
CONFIG_ENV = "LAPSTREAM_KAFKA_CONFIG"

# settings a config file / the environment may name (lower case, no prefix)
_KEYS = (
    "security_protocol", "sasl_mechanism", "sasl_username", "sasl_password", "sasl_password_file",
    "ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_key_password", "ssl_key_password_file",
    "ssl_check_hostname",
)
_SECRET_KEYS = ("sasl_password", "ssl_key_password")

#: keys of LAPSTREAM_FAUST_SETTINGS that carry credentials: they must come from here
FAUST_SECURITY_KEYS = ("broker_credentials", "ssl_context")


class KafkaSecurityError(ValueError):
    """A Kafka security setting is missing, contradictory or unreadable.
    The message is one line and never contains a secret."""


class Secret:
    """A password: ``reveal()`` gives it; repr/str/format never do."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self):  # never pickled (a pickle is an output too)
        raise TypeError("a Secret is not picklable")


@dataclass(frozen=True)
class KafkaSecurity:
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: Optional[str] = None
    sasl_username: Optional[str] = None
    sasl_password: Optional[Secret] = field(default=None, repr=False)
    ssl_cafile: Optional[str] = None
    ssl_certfile: Optional[str] = None
    ssl_keyfile: Optional[str] = None
    ssl_key_password: Optional[Secret] = field(default=None, repr=False)
    ssl_check_hostname: bool = True

    # -- reading

    @classmethod
    def load(cls, env: Optional[Mapping[str, str]] = None, config: Optional[str] = None,
             **flags: Any) -> "KafkaSecurity":
        """Flags (``None`` = not given) over environment over config file."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        path = config or env.get(CONFIG_ENV)
        if path:
            _merge(values, _read_config(path))
        _merge(values, _read_env(env))
        given = {}
        for key, value in flags.items():
            if key not in _KEYS:
                raise KafkaSecurityError(f"unknown Kafka security setting {key!r}")
            if value is not None:
                if key in _SECRET_KEYS:
                    raise KafkaSecurityError(
                        f"{key} cannot be a flag (it would show in the process list): "
                        f"use {key}_file or {ENV_PREFIX}{key.upper()}")
                given[key] = value
        _merge(values, given)
        return cls.from_values(values)

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "KafkaSecurity":
        return cls.load(env=env)

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> "KafkaSecurity":
        v = dict(values)
        for key in v:
            if key not in _KEYS:
                raise KafkaSecurityError(f"unknown Kafka security setting {key!r}")
        for key in _SECRET_KEYS:
            direct, path = v.pop(key, None), v.pop(key + "_file", None)
            if direct is not None and path is not None:
                raise KafkaSecurityError(f"give {key} or {key}_file, not both")
            if path is not None:
                v[key] = _read_secret_file(path, key)
            elif direct is not None:
                if isinstance(direct, Secret):
                    v[key] = direct
                else:
                    if not direct:
                        raise KafkaSecurityError(f"{key} is empty")
                    v[key] = Secret(str(direct))
        protocol = str(v.pop("security_protocol", None) or "PLAINTEXT").strip().upper()
        if protocol not in PROTOCOLS:
            raise KafkaSecurityError(
                f"security_protocol must be one of {', '.join(PROTOCOLS)}, not {_short(protocol)!r}")
        mech = v.pop("sasl_mechanism", None)
        if mech is not None:
            mech = str(mech).strip().upper()
            if mech not in MECHANISMS:
                raise KafkaSecurityError(
                    f"sasl_mechanism must be one of {', '.join(MECHANISMS)}, not {_short(mech)!r}")
        check = v.pop("ssl_check_hostname", True)
        if isinstance(check, str):
            low = check.strip().lower()
            if low in ("1", "true", "yes", "on"):
                check = True
            elif low in ("0", "false", "no", "off"):
                check = False
            else:
                raise KafkaSecurityError(f"ssl_check_hostname must be true or false, not {_short(check)!r}")
        sec = cls(security_protocol=protocol, sasl_mechanism=mech, ssl_check_hostname=bool(check),
                  **{k: (str(x) if k in ("sasl_username", "ssl_cafile", "ssl_certfile", "ssl_keyfile")
                         and x is not None else x) for k, x in v.items()})
        sec.validate()
        return sec

    def validate(self) -> None:
        p = self.security_protocol
        sasl, tls = p.startswith("SASL_"), p.endswith("SSL")
        if sasl:
            missing = [n for n, x in (("sasl_mechanism", self.sasl_mechanism),
                                      ("sasl_username", self.sasl_username),
                                      ("sasl_password", self.sasl_password)) if not x]
            if missing:
                raise KafkaSecurityError(
                    f"security_protocol {p} needs {', '.join(missing)} "
                    f"(e.g. {', '.join(ENV_PREFIX + m.upper() for m in missing)}"
                    f"{'; the password from ' + ENV_PREFIX + 'SASL_PASSWORD_FILE' if 'sasl_password' in missing else ''})")
        else:
            given = [n for n in ("sasl_mechanism", "sasl_username", "sasl_password")
                     if getattr(self, n) is not None]
            if given:
                raise KafkaSecurityError(
                    f"{', '.join(given)} set but security_protocol is {p}: "
                    "use SASL_SSL (or SASL_PLAINTEXT) to authenticate with SASL")
        if not tls:
            given = [n for n in ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_key_password")
                     if getattr(self, n) is not None]
            if given:
                raise KafkaSecurityError(
                    f"{', '.join(given)} set but security_protocol is {p}: use SSL or SASL_SSL for TLS")
        if self.ssl_keyfile and not self.ssl_certfile:
            raise KafkaSecurityError("ssl_keyfile set without ssl_certfile (the client certificate)")
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path is not None:
                try:
                    with open(path, "rb"):
                        pass
                except OSError as exc:
                    raise KafkaSecurityError(f"{name} {path}: cannot read it ({exc.strerror})") from None

    # -- what it says

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    def describe(self) -> str:
        """One line for logs: what is used, no secret (the user name is shown)."""
        parts = [self.security_protocol]
        if self.uses_sasl:
            parts.append(f"{self.sasl_mechanism} as {self.sasl_username!r}")
            if self.security_protocol == "SASL_PLAINTEXT" and self.sasl_mechanism == "PLAIN":
                parts.append("WARNING: the password crosses the network in clear text")
        if self.uses_tls:
            parts.append(f"CA {self.ssl_cafile or 'system default'}")
            if self.ssl_certfile:
                parts.append(f"client certificate {self.ssl_certfile}")
            if not self.ssl_check_hostname:
                parts.append("hostname NOT checked")
        return ", ".join(parts)

    def ssl_context(self) -> Optional[ssl.SSLContext]:
        """The client TLS context (None without TLS): server certificate
        verified against ``ssl_cafile`` (or the system's CAs), host name
        checked unless ``ssl_check_hostname`` is false, the client certificate
        and key loaded for mTLS."""
        if not self.uses_tls:
            return None
        try:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ssl_cafile)
        except (OSError, ssl.SSLError) as exc:
            raise KafkaSecurityError(f"ssl_cafile {self.ssl_cafile}: not a CA certificate "
                                     f"file ({_ssl_reason(exc)})") from None
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = self.ssl_check_hostname
        ctx.verify_mode = ssl.CERT_REQUIRED
        if self.ssl_certfile:
            password = self.ssl_key_password.reveal() if self.ssl_key_password else None
            try:
                ctx.load_cert_chain(self.ssl_certfile, self.ssl_keyfile, password=password)
            except (OSError, ssl.SSLError) as exc:
                raise KafkaSecurityError(
                    f"ssl_certfile {self.ssl_certfile} / ssl_keyfile {self.ssl_keyfile}: cannot load "
                    f"the client certificate and key ({_ssl_reason(exc)})") from None
        return ctx

    def aiokafka_kwargs(self) -> dict:
        """Keyword arguments for aiokafka's producer, consumer and admin client."""
        kw: dict[str, Any] = {"security_protocol": self.security_protocol}
        if self.uses_sasl:
            install_log_redaction()
        if self.uses_tls:
            kw["ssl_context"] = self.ssl_context()
        if self.uses_sasl:
            kw["sasl_mechanism"] = self.sasl_mechanism
            kw["sasl_plain_username"] = self.sasl_username
            kw["sasl_plain_password"] = self.sasl_password.reveal()
        return kw

    def faust_settings(self) -> dict:
        """Faust app settings: ``broker_credentials`` (none for PLAINTEXT)."""
        import faust

        if self.uses_sasl:
            install_log_redaction()
            return {"broker_credentials": faust.SASLCredentials(
                username=self.sasl_username, password=self.sasl_password.reveal(),
                ssl_context=self.ssl_context(), mechanism=self.sasl_mechanism)}
        if self.uses_tls:
            return {"broker_credentials": faust.SSLCredentials(self.ssl_context())}
        return {}


PLAINTEXT = KafkaSecurity()


class _SaslRedaction(logging.Filter):
    """aiokafka logs every request at DEBUG with its repr; for SASL PLAIN the
    SaslAuthenticate request's bytes are ``\\0user\\0password``. This filter
    (on the ``aiokafka.conn`` logger) replaces those bytes with ``***``."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:
            return True
        if "sasl_auth_bytes" in text:
            head = text.split("sasl_auth_bytes", 1)[0]
            record.msg = head + "sasl_auth_bytes=*** (SASL authentication bytes not logged))"
            record.args = ()
        return True


_REDACTION = _SaslRedaction()


def install_log_redaction() -> None:
    """Put the SASL redaction filter on aiokafka's connection logger (once)."""
    logger = logging.getLogger("aiokafka.conn")
    if _REDACTION not in logger.filters:
        logger.addFilter(_REDACTION)


class LoginRefusals(logging.Handler):
    """Remembers the SASL refusals aiokafka logs while it bootstraps (it then
    raises only "Unable to bootstrap", which reads like an unreachable
    broker). Prints nothing; keeps the error's class name only (not its
    message, which is the broker's text)."""

    #: aiokafka errors that mean the broker refused the login, not that it was unreachable
    NAMES = ("SaslAuthenticationFailed", "SaslAuthenticationFailedError", "AuthenticationFailedError",
             "UnsupportedSaslMechanismError", "IllegalSaslStateError", "AuthenticationMethodNotSupported")

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.seen: Optional[str] = None

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else (record.args,)
        for arg in args:
            name = type(arg).__name__
            if isinstance(arg, BaseException) and name in self.NAMES:
                self.seen = name


def watch_login_refusals(logger_name: str = "aiokafka") -> LoginRefusals:
    """A ``LoginRefusals`` on aiokafka's logger (quiet: the logger at ERROR,
    not propagated, so nothing reaches a console). The caller turns
    propagation back on when it wants aiokafka's logs (the worker)."""
    logger = logging.getLogger(logger_name)
    for h in logger.handlers:
        if isinstance(h, LoginRefusals):
            return h
    h = LoginRefusals()
    logger.addHandler(h)
    logger.setLevel(logging.ERROR)
    logger.propagate = False
    return h


def checked_faust_extra(extra: Any, source: str = "LAPSTREAM_FAUST_SETTINGS") -> dict:
    """``LAPSTREAM_FAUST_SETTINGS`` without credentials: those come from the
    ``LAPSTREAM_KAFKA_*`` settings (a JSON object cannot make Faust's
    credential objects, and Faust's error about it printed the password)."""
    if not isinstance(extra, dict):
        raise KafkaSecurityError(f"{source} must be a JSON object of Faust settings")
    bad = sorted(k for k in extra if k in FAUST_SECURITY_KEYS or "password" in str(k).lower()
                 or "sasl" in str(k).lower())
    if bad:
        raise KafkaSecurityError(
            f"{source} may not set {', '.join(map(repr, bad))} (value not shown): give Kafka "
            f"credentials with {ENV_PREFIX}SECURITY_PROTOCOL, {ENV_PREFIX}SASL_MECHANISM, "
            f"{ENV_PREFIX}SASL_USERNAME, {ENV_PREFIX}SASL_PASSWORD_FILE, {ENV_PREFIX}SSL_CAFILE ...")
    return extra


# --------------------------------------------------------------------------
# command-line flags

_FLAGS = (
    # (flag, key, help)
    ("--kafka-config", "config", f"file of Kafka security settings, key = value (${CONFIG_ENV})"),
    ("--kafka-security-protocol", "security_protocol",
     f"{' | '.join(PROTOCOLS)} (${ENV_PREFIX}SECURITY_PROTOCOL; default PLAINTEXT)"),
    ("--kafka-sasl-mechanism", "sasl_mechanism",
     f"{' | '.join(MECHANISMS)} (${ENV_PREFIX}SASL_MECHANISM)"),
    ("--kafka-sasl-username", "sasl_username", f"SASL user (${ENV_PREFIX}SASL_USERNAME)"),
    ("--kafka-sasl-password-file", "sasl_password_file",
     f"file holding the SASL password (${ENV_PREFIX}SASL_PASSWORD_FILE or ${ENV_PREFIX}SASL_PASSWORD)"),
    ("--kafka-ssl-cafile", "ssl_cafile", f"CA certificates to verify the brokers (${ENV_PREFIX}SSL_CAFILE)"),
    ("--kafka-ssl-certfile", "ssl_certfile", f"client certificate for mTLS (${ENV_PREFIX}SSL_CERTFILE)"),
    ("--kafka-ssl-keyfile", "ssl_keyfile", f"client key for mTLS (${ENV_PREFIX}SSL_KEYFILE)"),
    ("--kafka-ssl-key-password-file", "ssl_key_password_file",
     f"file holding the client key's password (${ENV_PREFIX}SSL_KEY_PASSWORD_FILE)"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The Kafka security flags (defaults come from the environment at use,
    never shown in ``--help``)."""
    g = parser.add_argument_group("Kafka security (flags override LAPSTREAM_KAFKA_* and the config file)")
    for flag, key, text in _FLAGS:
        g.add_argument(flag, dest="kafka_" + key, default=None, metavar="X" if "file" not in key and key != "config" else "PATH",
                       help=text)
    g.add_argument("--kafka-ssl-no-check-hostname", dest="kafka_ssl_check_hostname",
                   action="store_const", const=False, default=None,
                   help=f"do not check the broker's host name against its certificate "
                        f"(${ENV_PREFIX}SSL_CHECK_HOSTNAME=false)")


def from_args(args: argparse.Namespace, env: Optional[Mapping[str, str]] = None) -> KafkaSecurity:
    """The settings of a command (flags of ``add_arguments``, env, config)."""
    flags = {key: getattr(args, "kafka_" + key, None) for _, key, _ in _FLAGS if key != "config"}
    flags["ssl_check_hostname"] = getattr(args, "kafka_ssl_check_hostname", None)
    return KafkaSecurity.load(env=env, config=getattr(args, "kafka_config", None), **flags)


# --------------------------------------------------------------------------
# reading env, files


def _merge(values: dict, higher: Mapping[str, Any]) -> None:
    """``higher`` over ``values``; a password given either way there (itself
    or its file) replaces both ways of giving it here."""
    for key in _SECRET_KEYS:
        if key in higher or key + "_file" in higher:
            values.pop(key, None)
            values.pop(key + "_file", None)
    values.update(higher)


def _read_env(env: Mapping[str, str]) -> dict:
    out = {}
    for key in _KEYS:
        value = env.get(ENV_PREFIX + key.upper())
        if value is not None and value != "":
            out[key] = value
    return out


def _read_config(path: str) -> dict:
    try:
        st = os.stat(path)
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise KafkaSecurityError(f"Kafka config file {path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise KafkaSecurityError(f"Kafka config file {path}: not UTF-8 text") from None
    out: dict[str, str] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip().lower().replace(".", "_").replace("-", "_")
        if not sep or not key:
            raise KafkaSecurityError(f"Kafka config file {path} line {n}: expected key = value")
        if key not in _KEYS:
            raise KafkaSecurityError(f"Kafka config file {path} line {n}: unknown key {_short(key)!r} "
                                     f"(known: {', '.join(_KEYS)})")
        out[key] = value.strip()
    if any(k in out for k in _SECRET_KEYS) and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KafkaSecurityError(
            f"Kafka config file {path} holds a password and is readable by others: chmod 600 it "
            "(or put the password in a file named by sasl_password_file)")
    return out


def _read_secret_file(path: str, key: str) -> Secret:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KafkaSecurityError(f"{key}_file {path}: cannot read it ({exc.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise KafkaSecurityError(f"{key}_file {path}: not UTF-8 text") from None
    text = text.rstrip("\r\n")   # a file written by echo ends with a newline
    if not text:
        raise KafkaSecurityError(f"{key}_file {path} is empty")
    return Secret(text)


def _short(value: Any, limit: int = 40) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _ssl_reason(exc: BaseException) -> str:
    # the library's reason only (e.g. "PEM lib", "No such file"); never file content
    reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None)
    return str(reason) if reason else type(exc).__name__
