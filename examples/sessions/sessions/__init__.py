"""A rate limiter and session store on tables with a global front (see rebeam.toml)."""

from .front import FRONT, Front, allow, delete_session, get_session, put_session

__all__ = ["FRONT", "Front", "allow", "delete_session", "get_session", "put_session"]
