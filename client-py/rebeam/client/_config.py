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
