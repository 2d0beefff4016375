"""REBEAM_CONNECT_TO: how a client outside a compose network reaches members by their names."""
from __future__ import annotations

import pytest

from rebeam.client._client import _connect_to
from rebeam.client._config import ConfigError


def test_pairs_map_cluster_names_to_dialed_addresses() -> None:
    assert _connect_to("") == {}
    assert _connect_to("node-1:7200=127.0.0.1:7201, controller-0:7100=127.0.0.1:17100") == {
        "node-1:7200": "127.0.0.1:7201", "controller-0:7100": "127.0.0.1:17100"}


@pytest.mark.parametrize("bad", ["node-1:7200", "node-1=127.0.0.1:1", "node-1:7200=localhost"])
def test_malformed_pairs_are_refused_by_name(bad: str) -> None:
    with pytest.raises(ConfigError, match="REBEAM_CONNECT_TO"):
        _connect_to(bad)
