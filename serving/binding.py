"""Which address a server may bind: loopback by default, a wildcard only when asked for.

Kept apart from ``serving.server`` so the CLI can refuse a bad ``--host`` before importing
kserve.
"""

from __future__ import annotations

import ipaddress
import os

DEFAULT_HOST = "127.0.0.1"
# Binding every interface is for a container only (its pod network is the boundary); a local
# run must say so on purpose, through this variable, or the CLI refuses.
ALLOW_ALL_INTERFACES_ENV = "RECSYNTH_ALLOW_ALL_INTERFACES"


def check_host(host: str) -> str:
    """Return ``host`` if it is a loopback address, or a wildcard explicitly allowed.

    Args:
        host: the address the REST server should bind.

    Returns:
        The host, unchanged.

    Raises:
        ValueError: ``host`` binds every interface (``0.0.0.0``, ``::``) and
            ``RECSYNTH_ALLOW_ALL_INTERFACES=1`` is not set.
    """
    try:
        is_wildcard = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        is_wildcard = host == ""
    if is_wildcard and os.environ.get(ALLOW_ALL_INTERFACES_ENV) != "1":
        raise ValueError(
            f"--host {host!r} would listen on every interface; use 127.0.0.1, or set "
            f"{ALLOW_ALL_INTERFACES_ENV}=1 inside a container"
        )
    return host
