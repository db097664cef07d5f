"""Shared CLI setup: settings for admin verbs, the SDK client for client verbs, exit codes.

Exit codes: 0 success, 1 the server refused the request (its error code is printed),
2 bad usage, 3 the operation ran but failed (an import ended IMPORTFAILED, an export FAILED),
4 fsck found damage.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from stratus.config import ConfigError, Settings, load_settings

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_FAILED = 3
EXIT_DAMAGED = 4

DataDirOpt = typer.Option(None, "--data-dir", help="Data directory (default ./var or STRATUS_DATA_DIR).")
ConfigOpt = typer.Option(None, "--config", help="TOML config file (or STRATUS_CONFIG).")
EndpointOpt = typer.Option(None, "--endpoint", help="Server URL, e.g. http://127.0.0.1:8700 (or STRATUS_ENDPOINT).")
RegionOpt = typer.Option(None, "--region", help="Region (or TENCENTCLOUD_REGION; default ap-guangzhou).")
JsonOpt = typer.Option(False, "--json", help="Print JSON.")


def settings(data_dir: str | None, config: str | None) -> Settings:
    """The validated settings, or one line naming the file and the key, and exit 2 (no traceback)."""
    try:
        return load_settings(data_dir=data_dir, config_file=config)
    except ConfigError as exc:
        die(str(exc))


def die(message: str, code: int = EXIT_USAGE) -> NoReturn:
    console.print(f"[red]error:[/red] {escape(message)}")  # a message may hold [brackets]: not markup
    raise typer.Exit(code)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


class Endpoint:
    """Where and as whom the client verbs talk: the official SDK for actions, httpx for data."""

    def __init__(self, endpoint: str | None, region: str | None) -> None:
        url = endpoint or os.environ.get("STRATUS_ENDPOINT") or "http://127.0.0.1:8700"
        if "://" not in url:
            url = "http://" + url
        self.url = url.rstrip("/")
        self.region = region or os.environ.get("TENCENTCLOUD_REGION") or "ap-guangzhou"
        self.secret_id = os.environ.get("TENCENTCLOUD_SECRET_ID", "")
        self.secret_key = os.environ.get("TENCENTCLOUD_SECRET_KEY", "")
        if not self.secret_id or not self.secret_key:
            die("set TENCENTCLOUD_SECRET_ID and TENCENTCLOUD_SECRET_KEY (from `stratus account create`)")

    @property
    def host(self) -> str:
        return self.url.split("://", 1)[1]

    def _profile(self) -> Any:
        from tencentcloud.common.profile.client_profile import ClientProfile
        from tencentcloud.common.profile.http_profile import HttpProfile

        scheme = self.url.split("://", 1)[0]
        return ClientProfile(httpProfile=HttpProfile(endpoint=self.host, protocol=scheme, reqTimeout=120))

    def cvm(self) -> Any:
        from tencentcloud.common import credential
        from tencentcloud.cvm.v20170312 import cvm_client

        return cvm_client.CvmClient(credential.Credential(self.secret_id, self.secret_key), self.region,
                                    self._profile())

    def call(self, action: str, params: dict[str, Any]) -> dict[str, Any]:
        """Any action (our extensions too) through the SDK's CommonClient; returns Response."""
        from tencentcloud.common import credential
        from tencentcloud.common.common_client import CommonClient

        client = CommonClient("cvm", "2017-03-12", credential.Credential(self.secret_id, self.secret_key),
                              self.region, profile=self._profile())
        return client.call_json(action, params)["Response"]

    def request(self, action: str, params: dict[str, Any] | None = None) -> Any:
        """A standard action through the typed CvmClient; returns the response model."""
        from tencentcloud.cvm.v20170312 import models

        req = getattr(models, action + "Request")()
        req.from_json_string(json.dumps(params or {}))
        return getattr(self.cvm(), action)(req)

    def signed_headers(self, method: str, path: str, query: str = "", body: bytes | None = b"",
                       content_type: str = "application/json") -> dict[str, str]:
        from stratus.api.cvm.signing import sign

        headers = sign(self.secret_id, self.secret_key, method=method, host=self.host, path=path, query=query,
                       content_type=content_type, body=body)
        headers["X-TC-Region"] = self.region
        return headers


def sdk_errors(fn):  # type: ignore[no-untyped-def]
    """Turn an SDK exception into a readable message and exit code 1."""
    import functools

    from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return fn(*args, **kwargs)
        except TencentCloudSDKException as exc:
            die(f"{exc.get_code()}: {exc.get_message()} (RequestId {exc.get_request_id()})", EXIT_REFUSED)

    return wrapper
