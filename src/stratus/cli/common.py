"""Shared CLI setup: settings for admin verbs, the SDK client for client verbs, exit codes, output."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:  # the config's models (pydantic) load only for the admin verbs that read a config
    from stratus.config import Settings

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_FAILED = 3
EXIT_DAMAGED = 4
EXIT_UNREACHABLE = 5

EXIT_CODES = ("Exit codes: 0 success; 1 the server refused the request (its error code is printed); 2 bad usage "
              "(or no catalog in the data directory); 3 the work ran but failed (e.g. an import ended IMPORTFAILED); "
              "4 fsck found damage; 5 the server could not be reached.")

DEFAULT_ENDPOINT = "http://127.0.0.1:8700"
DEFAULT_REGION = "ap-guangzhou"

DataDirOpt = typer.Option(None, "--data-dir", metavar="DIR", envvar="STRATUS_DATA_DIR", show_default="./var",
                          help="The server's data directory.")
ConfigOpt = typer.Option(None, "--config", metavar="FILE", envvar="STRATUS_CONFIG", help="TOML config file.")
EndpointOpt = typer.Option(DEFAULT_ENDPOINT, "--endpoint", metavar="URL", envvar="STRATUS_ENDPOINT",
                           help="The server.")
RegionOpt = typer.Option(DEFAULT_REGION, "--region", envvar="TENCENTCLOUD_REGION", help="Region.")
JsonOpt = typer.Option(False, "--json", help="Print JSON.")
InitOpt = typer.Option(False, "--init", help="Create the catalog if the data directory has none yet.")


def settings(data_dir: str | None, config: str | None) -> Settings:
    """The validated settings, or one line naming the file and the key, and exit 2 (no traceback)."""
    from stratus.config import ConfigError, load_settings

    try:
        return load_settings(data_dir=data_dir, config_file=config)
    except ConfigError as exc:
        die(str(exc))


def die(message: str, code: int = EXIT_USAGE) -> NoReturn:
    console.print(f"[red]error:[/red] {escape(message)}", highlight=False)  # a message may hold [brackets]: not markup
    raise typer.Exit(code)


def catalog_label(cfg: Settings) -> str:
    """Where the catalog is, without a password: a SQLite path or host/database."""
    url = cfg.database_url
    if url.startswith("sqlite"):
        return url.split("sqlite:///", 1)[-1]
    return url.split("://", 1)[0] + "://" + url.split("@")[-1]


def admin_services(data_dir: str | None, config: str | None, *, init: bool = False) -> Any:
    """The services of the server's data directory, for admin verbs. Says which catalog on stderr, and refuses
    to make a new, empty one (a key in a catalog no server reads is a trap) unless ``init``."""
    from stratus.service.runtime import catalog_exists, prepare

    cfg = settings(data_dir, config)
    if not init and not catalog_exists(cfg):
        die(f"no catalog at {catalog_label(cfg)} (data directory {cfg.data_dir}). Run this on the server "
            "machine from the directory `stratus serve` (`make run`) runs in, or pass its --data-dir; "
            "--init creates a new catalog here.", EXIT_USAGE)
    console.print(f"catalog: {catalog_label(cfg)}", highlight=False)
    return prepare(cfg)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


class Endpoint:
    """Where and as whom the client verbs talk: the official SDK for actions, httpx for data."""

    def __init__(self, endpoint: str | None, region: str | None, *, secret_id: str | None = None,
                 secret_key: str | None = None) -> None:
        url = endpoint or os.environ.get("STRATUS_ENDPOINT") or DEFAULT_ENDPOINT
        if "://" not in url:
            url = "http://" + url
        self.url = url.rstrip("/")
        self.region = region or os.environ.get("TENCENTCLOUD_REGION") or DEFAULT_REGION
        self.secret_id = secret_id or os.environ.get("TENCENTCLOUD_SECRET_ID", "")
        self.secret_key = secret_key or os.environ.get("TENCENTCLOUD_SECRET_KEY", "")
        if not self.secret_id or not self.secret_key:
            die('set TENCENTCLOUD_SECRET_ID and TENCENTCLOUD_SECRET_KEY: on the server machine, '
                '`eval "$(stratus account create NAME)"` creates an account and sets both')

    def in_region(self, region: str) -> Endpoint:
        return Endpoint(self.url, region, secret_id=self.secret_id, secret_key=self.secret_key)

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
        """Any action (our extensions too); returns Response (cli/actions.py: signed like the SDK, without it)."""
        from stratus.cli.actions import call_action

        return call_action(self, action, params)

    def describe_all(self, action: str, items: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Every item a Describe* action lists (``items``: ImageSet, InstanceSet), 100 a page."""
        found: list[dict[str, Any]] = []
        while True:
            resp = self.call(action, {**(params or {}), "Limit": 100, "Offset": len(found)})
            found += resp[items]
            if len(found) >= resp["TotalCount"] or not resp[items]:
                return found

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


def unreachable(url: str) -> NoReturn:
    die(f"cannot reach {url}: is `stratus serve` (`make run`) running there? (or pass --endpoint / set "
        "STRATUS_ENDPOINT)", EXIT_UNREACHABLE)


# What a client can do about an error the server names (beyond the server's own message).
HINTS = {
    "AuthFailure.SecretIdNotFound": "this server does not know the key: it may come from `stratus account create` "
    "run against another data directory than the server's (run it from the directory `make run` runs in, or pass "
    "the server's --data-dir), or it was revoked",
}


def sdk_errors(fn):
    """Turn an SDK exception into a readable message: exit 1 when the server refused, 5 when it can't be
    reached."""
    import functools

    from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException

    from stratus.cli.actions import ActionError

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (TencentCloudSDKException, ActionError) as exc:
            code, message, request_id = ((exc.code, exc.message, exc.request_id) if isinstance(exc, ActionError)
                                         else (exc.get_code(), exc.get_message(), exc.get_request_id()))
            if code == "ClientNetworkError":
                unreachable(kwargs.get("endpoint") or os.environ.get("STRATUS_ENDPOINT") or DEFAULT_ENDPOINT)
            hint = HINTS.get(code or "")
            die(f"{code}: {message}{f' ({hint})' if hint else ''} (RequestId {request_id})", EXIT_REFUSED)
        except Exception as exc:
            # httpx is loaded only by the verbs that use it: if it isn't, this can't be one of its errors.
            httpx = sys.modules.get("httpx")
            if httpx is not None and isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
                unreachable(kwargs.get("endpoint") or os.environ.get("STRATUS_ENDPOINT") or DEFAULT_ENDPOINT)
            bulk = sys.modules.get("stratus.cli.bulk")
            if bulk is not None and isinstance(exc, bulk.TransportError) and isinstance(exc.__cause__,
                                                                                        ConnectionRefusedError):
                unreachable(kwargs.get("endpoint") or os.environ.get("STRATUS_ENDPOINT") or DEFAULT_ENDPOINT)
            raise

    return wrapper


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Rows on stdout: a table on a terminal (ids never cut short), plain tab-separated lines otherwise."""
    cells = [["" if v is None else str(v) for v in row] for row in rows]
    if not out.is_terminal:
        for row in cells:
            sys.stdout.write("\t".join(row) + "\n")
        return
    from rich.table import Table

    t = Table(*headers)
    for column, header in zip(t.columns, headers, strict=True):
        column.overflow = "fold"  # a narrow terminal wraps the other columns; it never drops characters
        if header.endswith("Id") or header.endswith("Ids") or header == "Keys":
            # An id is copied whole or it is useless: never wrapped, cut or ellipsized, whatever the width.
            column.no_wrap, column.overflow = True, "ignore"
            column.min_width = max([len(header), *(len(r[headers.index(header)]) for r in cells)])
    for row in cells:
        t.add_row(*row)
    out.print(t, crop=False)
