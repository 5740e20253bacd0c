"""A cluster of real server processes sharing one redis-server, each with its own data dir
holding the same key files (as operations.md asks of every node of a cluster)."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from helpers.server import ServerProcess

from recorder.crypto import MASTER_KEY_FILE, load_master_key
from sfu.keys import SIGNING_KEY_FILE, KeyStore

__all__ = ["admin_get", "node_args", "start_node", "wait_for"]


def node_args(redis_url: str, node_id: str, ttl_s: float = 1.5) -> list[str]:
    return ["--redis", redis_url, "--node-id", node_id, "--cluster-ttl", str(ttl_s)]


def _share_keys(template: Path, data_dir: Path) -> None:
    """Give ``data_dir`` the key files of ``template`` (created there on first use)."""
    KeyStore.open(template)
    load_master_key(template, {})
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in (SIGNING_KEY_FILE, MASTER_KEY_FILE):
        shutil.copy2(template / name, data_dir / name)
        (data_dir / name).chmod(0o600)


def start_node(
    root: Path, redis_url: str, node_id: str, *, ttl_s: float = 1.5, extra: list[str] | None = None
) -> ServerProcess:
    """Start node ``node_id`` with data dir ``root/node_id`` and the keys of ``root/keys``."""
    data_dir = root / node_id
    _share_keys(root / "keys", data_dir)
    args = node_args(redis_url, node_id, ttl_s) + (extra or [])
    return ServerProcess(data_dir, args).start()


def admin_get(
    node: ServerProcess, path: str, grants: tuple[str, ...] = ("admin",)
) -> tuple[int, Any]:
    """GET an API endpoint of ``node`` with a token carrying ``grants``: (status, JSON body)."""
    token = node.token("admin-console", "ops", role="admin", grants=grants)
    request = urllib.request.Request(node.http + path, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def wait_for(predicate: Any, timeout: float, interval: float = 0.05) -> float:
    """Poll ``predicate()`` (sync) until true; the seconds it took. TimeoutError after."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)
    return time.monotonic() - started
