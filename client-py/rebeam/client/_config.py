"""Where the client finds the controller's URL and its token: arguments, then environment
variables, then the config file ``~/.config/rebeam/config.toml``."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .._errors import Error

#: The controller's default ``--api-listen``.
DEFAULT_URL = "http://127.0.0.1:7100"


class ConfigError(Error, ValueError):
    """The controller URL is malformed, or the config file is unreadable or has a wrong field
    (the message names both)."""


@dataclass(frozen=True)
class Settings:
    """Resolved connection settings."""

    url: str
    token: str | None
    #: Where the token came from ("argument", "REBEAM_TOKEN", the config file, ...), for messages.
    token_source: str | None


@dataclass(frozen=True)
class TlsFiles:
    """The PEM contents the client verifies servers with and, for mTLS, presents."""

    #: CA certificate(s) that must sign the servers' certificates (None: the system's roots).
    ca: bytes | None
    #: The client's certificate chain, if it presents one.
    cert: bytes | None
    #: The private key of ``cert``.
    key: bytes | None

    @property
    def given(self) -> bool:
        """Whether any TLS file was given (then only ``https://`` is acceptable)."""
        return any(v is not None for v in (self.ca, self.cert, self.key))


def _read_pem(path: str | os.PathLike[str] | None, what: str) -> bytes | None:
    if path is None or path == "":
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{what} {path}: cannot be read: {e.strerror or e}") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"{what} {path}: not a PEM file (no -----BEGIN line)")
    return data


def resolve_tls(ca: str | os.PathLike[str] | None = None, cert: str | os.PathLike[str] | None = None,
                key: str | os.PathLike[str] | None = None) -> TlsFiles:
    """Reads the TLS files named by the arguments, else ``REBEAM_CA``, ``REBEAM_CERT`` and
    ``REBEAM_KEY``; a certificate needs its key and the reverse."""
    ca = ca if ca is not None else os.environ.get("REBEAM_CA")
    cert = cert if cert is not None else os.environ.get("REBEAM_CERT")
    key = key if key is not None else os.environ.get("REBEAM_KEY")
    if bool(cert) != bool(key):
        raise ConfigError("a client certificate needs its key and the reverse: "
                          "give both cert= and key= (--cert/--key, REBEAM_CERT/REBEAM_KEY)")
    return TlsFiles(_read_pem(ca, "CA file"), _read_pem(cert, "certificate file"),
                    _read_pem(key, "key file"))


def config_path() -> Path:
    """``$REBEAM_CONFIG``, else ``$XDG_CONFIG_HOME/rebeam/config.toml``, else
    ``~/.config/rebeam/config.toml``."""
    explicit = os.environ.get("REBEAM_CONFIG")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "rebeam" / "config.toml"


def _read_config(path: Path) -> dict[str, str]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    out: dict[str, str] = {}
    for key in ("url", "token"):
        if key in data:
            if not isinstance(data[key], str) or not data[key]:
                raise ConfigError(f"{path}: {key} must be a non-empty string")
            out[key] = data[key]
    return out


def resolve(url: str | None = None, token: str | None = None, secret: str | None = None) -> Settings:
    """Picks the URL and the credential, first found wins: arguments (``token``, then
    ``secret``), ``REBEAM_URL``/``REBEAM_TOKEN``, ``REBEAM_SECRET`` (the cluster secret, which
    the controller also accepts), then the config file's ``url`` and ``token``."""
    path = config_path()
    explicit = (url or os.environ.get("REBEAM_URL")) and (
        token or secret or os.environ.get("REBEAM_TOKEN") or os.environ.get("REBEAM_SECRET"))
    file = {} if explicit else _read_config(path)  # not read (nor able to fail) when unneeded
    chosen_url = url or os.environ.get("REBEAM_URL") or file.get("url") or DEFAULT_URL
    candidates = [
        (token, "the token argument"),
        (secret, "the secret argument"),
        (os.environ.get("REBEAM_TOKEN"), "REBEAM_TOKEN"),
        (os.environ.get("REBEAM_SECRET"), "REBEAM_SECRET"),
        (file.get("token"), str(path)),
    ]
    for value, source in candidates:
        if value:
            return Settings(chosen_url, value, source)
    return Settings(chosen_url, None, None)
