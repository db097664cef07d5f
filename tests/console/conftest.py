"""Fixtures for the console's browser tests: Debian's Chromium driven by Playwright (one browser per
session) against a real `stratus serve`; every page records its requests, and a test fails if one
left the server's origin or the page logged a JavaScript error."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests.conftest import Account, Server, make_server, new_db_url

CHROMIUM = os.environ.get("STRATUS_TEST_CHROMIUM", "/usr/bin/chromium")
MiB = 1024 * 1024
expect.set_options(timeout=20_000)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make deps` installs Debian's chromium (scripts/debian-packages.txt)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server per module on SQLite, with three regions; copies are paced so their progress can be watched."""
    tmp = tmp_path_factory.mktemp("console")
    regions = "".join(f'[[regions]]\nname = "{n}"\ndisplay_name = "{d}"\nzones = ["{n}-1"]\n' for n, d in
                      [("ap-guangzhou", "South China (Guangzhou)"), ("ap-shanghai", "East China (Shanghai)"),
                       ("ap-beijing", "North China (Beijing)")])
    srv = make_server(tmp, new_db_url(tmp), config_extra="sync_bytes_per_second = 4194304\n" + regions,
                      env_extra={"STRATUS_IMPORT_URL_ALLOW": "127.0.0.2/32"})
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@dataclass
class Console:
    """A browser context (its own storage: one person) with one page on the console."""

    server: Server
    context: BrowserContext
    page: Page
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def open(self, path: str = "/console/") -> Page:
        self.page.goto(self.server.url + path)
        return self.page

    def sign_in(self, account: Account, secret_key: str | None = None) -> Page:
        page = self.open()
        page.get_by_label("SecretId").fill(account.secret_id)
        page.get_by_label("SecretKey").fill(secret_key or account.secret_key)
        page.get_by_role("button", name="Sign in").click()
        return page

    def signed_in(self, account: Account) -> Page:
        page = self.sign_in(account)
        expect(page.get_by_role("heading", name="Images in ap-guangzhou", exact=True)).to_be_visible()
        return page

    def tab(self, name: str) -> None:
        self.page.get_by_role("tab", name=name).click()
        expect(self.page.get_by_role("tab", name=name)).to_have_attribute("aria-selected", "true")

    def foreign_requests(self) -> list[str]:
        origin = self.server.url + "/"
        return [u for u in self.requests if not (u.startswith(origin) or u.startswith(("blob:", "data:")))]


@pytest.fixture
def console(browser: Browser, server: Server) -> Iterator[Any]:
    """Make consoles (one per person); on teardown, assert none of them went outside the server."""
    made: list[Console] = []

    def new(width: int = 1280, height: int = 800, timezone_id: str | None = None) -> Console:
        ctx = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True,
                                  timezone_id=timezone_id, locale="en-US")
        page = ctx.new_page()
        c = Console(server, ctx, page)
        page.on("request", lambda r: c.requests.append(r.url))
        page.on("pageerror", lambda e: c.errors.append(str(e)))
        made.append(c)
        return c

    try:
        yield new
    finally:
        for c in made:
            c.context.close()
    for c in made:
        assert c.requests, "the page made no request at all"
        assert c.foreign_requests() == [], "requests left the server's origin"
        assert c.errors == [], f"JavaScript errors: {c.errors}"


def make_qcow2(path: Path, data_mib: int = 20, virtual_mib: int = 64) -> Path:
    """A real qcow2 holding `data_mib` MiB of random bytes (so no chunk dedups with another image)."""
    raw = path.with_suffix(".raw")
    with raw.open("wb") as f:
        f.write(os.urandom(data_mib * MiB))
        f.truncate(virtual_mib * MiB)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(path)], check=True)
    raw.unlink()
    return path
