"""The web console end to end: Debian's Chromium, driven by Playwright, against a real `stratus serve`.

Every test also checks (in the `console` fixture) that its pages made no request outside the
server's origin and raised no JavaScript error."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qs, urlparse
from zoneinfo import ZoneInfo

import httpx
import psutil
import pytest
from playwright.sync_api import Page, expect

from stratus.api.cvm.signing import sign
from tests.conftest import Account, Server, wait_for
from tests.console.conftest import MiB, make_qcow2
from tests.e2e.helpers import describe, file_server, import_request, wait_image

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "docs" / "console"


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def disks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("disks")
    make_qcow2(d / "small.qcow2", data_mib=2, virtual_mib=16)
    make_qcow2(d / "big.qcow2", data_mib=24, virtual_mib=64)
    return d


@pytest.fixture
def shots(tmp_path: Path) -> Iterator[Path]:
    """Screenshots go to a temporary directory; with STRATUS_CONSOLE_SCREENSHOTS=1 into docs/console/."""
    out = SHOTS if os.environ.get("STRATUS_CONSOLE_SCREENSHOTS") == "1" else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    yield out


def sdk_import(server: Server, account: Account, disks: Path, file: str, name: str) -> str:
    with file_server(disks) as (base, _):
        resp = server.client(account).ImportImage(import_request(name, f"{base}/{file}"))
        image = wait_image(server, account, resp.ImageId)
    assert image["ImageState"] == "NORMAL", image
    return resp.ImageId


@pytest.fixture(scope="module")
def owner(server: Server) -> Account:
    return server.account("olivia")


@pytest.fixture(scope="module")
def grantee(server: Server) -> Account:
    return server.account("gabe")


@pytest.fixture(scope="module")
def stranger(server: Server) -> Account:
    return server.account("stan")


@pytest.fixture(scope="module")
def owned(server: Server, owner: Account, disks: Path) -> str:
    """A NORMAL custom image of the owner, shared with nobody."""
    return sdk_import(server, owner, disks, "small.qcow2", "owned-small")


@pytest.fixture(scope="module")
def shared(server: Server, owner: Account, grantee: Account, disks: Path) -> str:
    image_id = sdk_import(server, owner, disks, "small.qcow2", "shared-with-gabe")
    server.common(owner).call_json("ModifyImageSharePermission", {
        "ImageId": image_id, "AccountIds": [grantee.account_id], "Permission": "SHARE"})
    return image_id


@pytest.fixture(scope="module")
def public(server: Server, disks: Path) -> str:
    op = server.account("opal", operator=True)
    image_id = sdk_import(server, op, disks, "small.qcow2", "public-base")
    server.common(op).call_json("PublishImage", {"ImageId": image_id})
    return image_id


def data_get(server: Server, account: Account, path: str) -> dict:
    headers = sign(account.secret_id, account.secret_key, method="GET", host=server.endpoint, path=path)
    return httpx.get(server.url + path, headers=headers).json()["Response"]


def row(page: Page, text: str):  # type: ignore[no-untyped-def]
    return page.locator("tbody tr", has_text=text)


def op_item(page: Page, text: str):  # type: ignore[no-untyped-def]
    return page.locator("#ops-list li", has_text=text)


def session_record(page: Page) -> dict | None:
    """What the console keeps in IndexedDB: the SecretId and a CryptoKey, never the SecretKey."""
    return page.evaluate("""() => new Promise((resolve, reject) => {
        const req = indexedDB.open("stratus-console", 1);
        req.onupgradeneeded = () => req.result.createObjectStore("session");
        req.onsuccess = () => {
            const get = req.result.transaction("session").objectStore("session").get("current");
            get.onsuccess = () => {
                const s = get.result;
                resolve(s ? {secretId: s.secretId, keyType: s.key.constructor.name,
                             extractable: s.key.extractable, expiresAt: s.expiresAt,
                             localStorage: JSON.stringify(localStorage)} : null);
            };
            get.onerror = () => reject(get.error);
        };
    })""")


# ------------------------------------------------------------------------------------------ serving


def test_console_is_served_from_the_package_with_a_strict_csp(server: Server) -> None:
    r = httpx.get(server.url + "/console")
    assert r.status_code == 308 and r.headers["location"] == "/console/"
    page = httpx.get(server.url + "/console/")
    assert page.status_code == 200
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "default-src 'none'" in csp
    assert "unsafe" not in csp
    html = page.text
    assert re.findall(r"<script(?![^>]*\bsrc=)", html) == [], "inline script"
    assert not re.search(r"\sstyle=|\son[a-z]+=", html), "inline style or handler"
    import stratus.console.web as web

    for path in sorted((web.STATIC / "js").glob("*.js")):
        r = httpx.get(f"{server.url}/console/js/{path.name}")
        assert r.status_code == 200 and "javascript" in r.headers["content-type"]
        assert r.headers["content-security-policy"] == csp
        assert "innerHTML" not in r.text and "eval(" not in r.text, path.name
        # Only the SVG namespace and a placeholder may be spelled as URLs; requests are checked in every test.
        hosts = set(re.findall(r"https?://([a-z0-9][a-z0-9.-]*)", r.text)) - {"www.w3.org", "example.com"}
        assert hosts == set(), f"{path.name} names another origin"


# ------------------------------------------------------------------------------------------ sign-in


def test_sign_in_wrong_key_and_sign_out(console, server: Server, owner: Account) -> None:  # type: ignore[no-untyped-def]
    c = console()
    page = c.sign_in(owner, secret_key="x" * 32)
    expect(page.locator("#signin-error")).to_contain_text("AuthFailure.SignatureFailure")
    page.get_by_label("SecretId").fill("AKID" + "0" * 32)
    page.get_by_label("SecretKey").fill(owner.secret_key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#signin-error")).to_contain_text("AuthFailure.SecretIdNotFound")
    assert session_record(page) is None

    c.signed_in(owner)
    stored = session_record(page)
    assert stored is not None and stored["secretId"] == owner.secret_id
    assert stored["keyType"] == "CryptoKey" and stored["extractable"] is False
    assert owner.secret_key not in stored["localStorage"]
    page.reload()
    expect(page.get_by_role("heading", name="Images in ap-guangzhou", exact=True)).to_be_visible()
    ops_key = f"stratus.ops.{owner.secret_id}"
    assert page.evaluate("k => localStorage.getItem(k)", ops_key) == "[]"

    page.get_by_role("button", name="Sign out").click()
    expect(page.locator("#signin-error")).to_contain_text("You signed out")
    assert session_record(page) is None
    assert page.evaluate("k => localStorage.getItem(k)", ops_key) is None
    page.reload()
    expect(page.get_by_label("SecretKey")).to_be_visible()

    # A session past its expiry is forgotten, with a message.
    c.signed_in(owner)
    page.evaluate("""() => new Promise((resolve) => {
        const req = indexedDB.open("stratus-console", 1);
        req.onsuccess = () => {
            const store = req.result.transaction("session", "readwrite").objectStore("session");
            const get = store.get("current");
            get.onsuccess = () => {
                store.put({...get.result, expiresAt: Date.now() - 1}, "current").onsuccess = resolve;
            };
        };
    })""")
    page.reload()
    expect(page.locator("#signin-error")).to_contain_text("session expired")
    assert session_record(page) is None
    c.signed_in(owner)
    page.get_by_role("button", name="Sign out").click()
    expect(page.locator("#signin-error")).to_contain_text("You signed out")
    assert session_record(page) is None
    page.reload()
    expect(page.get_by_label("SecretKey")).to_be_visible()


def test_a_revoked_key_sends_the_user_back_to_sign_in(console, server: Server) -> None:  # type: ignore[no-untyped-def]
    base = server.account("dave")
    extra = json.loads(server.run("account", "key", "add", "dave", "--data-dir", str(server.data_dir),
                                  "--config", str(server.config), "--json").stdout)
    key = Account(base.account_id, extra["SecretId"], extra["SecretKey"], "dave")
    c = console()
    page = c.signed_in(key)
    server.run("account", "key", "revoke", key.secret_id, "--data-dir", str(server.data_dir),
               "--config", str(server.config))
    expect(page.locator("#signin-error")).to_contain_text("AuthFailure.SecretIdNotFound", timeout=30_000)
    expect(page.locator("#signin-error")).to_contain_text("Sign in again")
    assert session_record(page) is None


# ------------------------------------------------------------------------------------------ images


def test_tabs_for_an_owner_a_grantee_and_a_stranger(console, server: Server, owner: Account, grantee: Account,  # type: ignore[no-untyped-def]
                                                    stranger: Account, shared: str, public: str) -> None:
    c = console(timezone_id="Asia/Tokyo")
    page = c.signed_in(owner)
    expect(row(page, "shared-with-gabe")).to_be_visible()
    expect(row(page, "shared-with-gabe").locator(".state")).to_have_text("NORMAL")
    created = describe(server, owner, shared)["CreatedTime"]  # type: ignore[index]
    local = datetime.fromisoformat(created.replace("Z", "+00:00")).astimezone(ZoneInfo("Asia/Tokyo"))
    expect(row(page, "shared-with-gabe")).to_contain_text(f"{local.hour % 12 or 12}:{local.minute:02d}")
    expect(page.locator("#foot")).to_contain_text("Asia/Tokyo")
    c.tab("Public")
    expect(row(page, "public-base")).to_be_visible()
    expect(row(page, "shared-with-gabe")).to_have_count(0)
    c.tab("Shared")
    expect(page.get_by_role("heading", name="Nothing is shared with you here")).to_be_visible()

    g = console()
    gpage = g.signed_in(grantee)
    expect(gpage.get_by_role("heading", name="No custom images in ap-guangzhou yet")).to_be_visible()
    g.tab("Shared")
    expect(row(gpage, "shared-with-gabe")).to_be_visible()
    expect(row(gpage, "shared-with-gabe")).to_contain_text("NORMAL")
    g.tab("Public")
    expect(row(gpage, "public-base")).to_be_visible()

    s = console()
    spage = s.signed_in(stranger)
    expect(spage.get_by_role("heading", name="No custom images in ap-guangzhou yet")).to_be_visible()
    expect(spage.get_by_role("button", name="Import your first image")).to_be_visible()
    s.tab("Shared")
    expect(spage.get_by_role("heading", name="Nothing is shared with you here")).to_be_visible()
    s.tab("Public")
    expect(row(spage, "public-base")).to_be_visible()
    expect(spage.locator("tbody tr")).to_have_count(1)
    spage.goto(f"{server.url}/console/#/images/{shared}")
    expect(spage.get_by_role("heading", name="Image not found")).to_be_visible()


def test_search_and_filters(console, owner: Account, owned: str, shared: str) -> None:  # type: ignore[no-untyped-def]
    c = console()
    page = c.signed_in(owner)
    page.get_by_label("Search").fill(owned)
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("tbody tr")).to_have_count(1)
    expect(row(page, "owned-small")).to_be_visible()
    page.get_by_label("Search").fill("with-ga")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("tbody tr")).to_have_count(1)
    expect(row(page, "shared-with-gabe")).to_be_visible()
    page.get_by_label("Search").fill("")
    page.get_by_label("State").select_option("IMPORTFAILED")
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_role("heading", name="No image matches")).to_be_visible()
    page.get_by_role("button", name="Clear search and filters").click()
    expect(row(page, "owned-small")).to_be_visible()
    page.get_by_label("OS", exact=True).select_option("Ubuntu")
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_role("heading", name="No image matches")).to_be_visible()
    page.get_by_label("OS", exact=True).select_option("CentOS")
    page.get_by_label("Platform").fill("cent")
    page.get_by_role("button", name="Apply").click()
    expect(row(page, "owned-small")).to_be_visible()


def test_rename_and_describe(console, server: Server, disks: Path) -> None:  # type: ignore[no-untyped-def]
    acct = server.account("nina")
    image_id = sdk_import(server, acct, disks, "small.qcow2", "before")
    sdk_import(server, acct, disks, "small.qcow2", "taken")
    c = console()
    page = c.signed_in(acct)
    page.goto(f"{server.url}/console/#/images/{image_id}")
    page.get_by_role("button", name="Rename / describe").click()
    page.get_by_label("Name", exact=True).fill("x" * 61)
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_text("Give a name of 1 to 60 characters.")).to_be_visible()
    page.get_by_label("Name", exact=True).fill("taken")
    page.get_by_role("button", name="Save").click()
    expect(page.locator("dialog .error")).to_contain_text("InvalidImageName.Duplicate")
    page.get_by_label("Name", exact=True).fill("after")
    page.get_by_label("Description").fill("renamed in the console")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_role("heading", name=re.compile("^after"))).to_be_visible()
    expect(page.get_by_text("renamed in the console")).to_be_visible()
    image = describe(server, acct, image_id)
    assert image is not None and image["ImageName"] == "after"
    assert image["ImageDescription"] == "renamed in the console"


def start_upload(page: Page, disk: Path, name: str) -> None:
    page.get_by_role("button", name=re.compile(r"^Import (image|your first image)$")).first.click()
    page.get_by_label("Upload a file").check()
    page.get_by_label("Disk image file").set_input_files(str(disk))
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_role("button", name="Import", exact=True).click()


def test_upload_from_the_browser_reaches_normal(console, server: Server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    acct = server.account("uma")
    disk = make_qcow2(tmp_path / "browser.qcow2", data_mib=12, virtual_mib=32)
    c = console()
    page = c.signed_in(acct)
    start_upload(page, disk, "from-browser")
    expect(op_item(page, "from-browser")).to_be_visible()
    expect(row(page, "from-browser").locator(".state")).to_have_text("NORMAL", timeout=90_000)
    expect(op_item(page, "Import from-browser").locator(".state")).to_have_text("NORMAL")
    puts = [u for u in c.requests if "/uploads/up-" in u and "offset=" in u]
    assert len(puts) == 2, puts  # 12 MiB + header in 8 MiB slices
    image_id = row(page, "from-browser").locator(".id").inner_text()
    image = describe(server, acct, image_id)
    assert image is not None and image["DiskSet"][0]["VirtualSize"] == 32 * MiB
    assert image["DiskSet"][0]["SourceFormat"].lower() == "qcow2"


def test_upload_cut_twice_resumed_after_the_cut_and_after_a_reload(  # type: ignore[no-untyped-def]
        console, server: Server, tmp_path: Path, disks: Path) -> None:
    acct = server.account("rita")
    disk = make_qcow2(tmp_path / "resumed.qcow2", data_mib=20, virtual_mib=32)
    c = console()
    page = c.signed_in(acct)
    puts: list[str] = []

    def cut(route) -> None:  # type: ignore[no-untyped-def]
        # The network fails under the 2nd and the 4th piece sent.
        if route.request.method == "PUT":
            puts.append(route.request.url)
            if len(puts) in (2, 4):
                route.abort("connectionreset")
                return
        route.continue_()

    page.route("**/uploads/**", cut)
    start_upload(page, disk, "resumed")
    op = op_item(page, "resumed")
    expect(op.locator(".state")).to_have_text("INTERRUPTED")
    expect(op).to_contain_text("NetworkError")
    uploads = page.evaluate("JSON.parse(localStorage.getItem('stratus.uploads'))")
    (entry,) = uploads.values()
    assert data_get(server, acct, f"/uploads/{entry['id']}")["Received"] == 8 * MiB

    # After a network cut, Resume goes on from what the server has.
    op.get_by_role("button", name="Resume resumed.qcow2").click()
    expect(op).to_contain_text("16 MiB of")
    expect(op.locator(".state")).to_have_text("INTERRUPTED")
    assert [int(parse_qs(urlparse(u).query)["offset"][0]) for u in puts] == [0, 8 * MiB, 8 * MiB, 16 * MiB]
    assert data_get(server, acct, f"/uploads/{entry['id']}")["Received"] == 16 * MiB
    page.unroute("**/uploads/**")

    # After a reload, choosing the same file again goes on from there too.
    page.reload()
    chooser = page.get_by_label("Choose resumed.qcow2 again to resume")
    expect(chooser).to_be_visible()
    before = len(c.requests)
    chooser.set_input_files(str(disk))
    expect(row(page, "resumed").locator(".state")).to_have_text("NORMAL", timeout=90_000)
    offsets = [int(parse_qs(urlparse(u).query)["offset"][0]) for u in c.requests[before:]
               if "/uploads/up-" in u and "offset=" in u]
    assert offsets == [16 * MiB], offsets
    assert page.evaluate("localStorage.getItem('stratus.uploads')") == "{}"
    # The bytes that reached the store are the file's: the same file imported by URL has the same manifest.
    image_id = row(page, "resumed").locator(".id").inner_text()
    (tmp_path / "srv").mkdir()
    os.link(disk, tmp_path / "srv" / "resumed.qcow2")
    reference = sdk_import(server, acct, tmp_path / "srv", "resumed.qcow2", "resumed-by-url")
    assert (describe(server, acct, image_id)["DiskSet"][0]["ManifestDigest"]  # type: ignore[index]
            == describe(server, acct, reference)["DiskSet"][0]["ManifestDigest"])  # type: ignore[index]


def test_url_import_checks_input_and_shows_the_failure_reason(console, server: Server) -> None:  # type: ignore[no-untyped-def]
    acct = server.account("ursula")
    c = console()
    page = c.signed_in(acct)
    page.get_by_role("button", name="Import your first image").click()
    page.get_by_label("Image URL").fill("ftp://example.com/disk.qcow2")
    page.get_by_role("button", name="Import", exact=True).click()
    expect(page.get_by_text("Enter an http:// or https:// URL.")).to_be_visible()
    expect(page.get_by_text("Give a name of 1 to 60 characters.")).to_be_visible()
    mine = {"Filters": [{"Name": "image-type", "Values": ["PRIVATE_IMAGE"]}]}
    assert server.common(acct).call_json("DescribeImages", mine)["Response"]["TotalCount"] == 0

    page.get_by_label("Image URL").fill("http://127.0.0.1:9/disk.qcow2")
    page.get_by_label("Name", exact=True).fill("from-loopback")
    page.get_by_role("button", name="Import", exact=True).click()
    expect(row(page, "from-loopback").locator(".state")).to_have_text("IMPORTFAILED", timeout=60_000)
    expect(row(page, "from-loopback").locator(".reason")).to_contain_text("loopback")

    # The server's refusal is shown with the contract's code.
    page.get_by_role("button", name="Import image").click()
    page.get_by_label("Image URL").fill("http://127.0.0.1:9/disk.qcow2")
    page.get_by_label("Name", exact=True).fill("from-loopback")
    page.get_by_role("button", name="Import", exact=True).click()
    expect(page.locator("dialog .error")).to_contain_text("InvalidImageName.Duplicate")


def test_launch_and_instance_actions(console, server: Server, owner: Account, owned: str,  # type: ignore[no-untyped-def]
                                     shots: Path) -> None:
    c = console()
    page = c.signed_in(owner)
    page.goto(f"{server.url}/console/#/images/{owned}")
    page.get_by_role("button", name="Launch instances").click()
    page.get_by_label("Count", exact=True).fill("0")
    page.get_by_role("button", name="Launch", exact=True).click()
    expect(page.get_by_text("Enter a whole number from 1 to 500.")).to_be_visible()
    page.get_by_label("Count", exact=True).fill("2")
    page.get_by_label("Name (optional)").fill("web-{R:1}")
    page.get_by_label("User data (optional)").fill("#cloud-config\nhostname: web\n")
    page.get_by_role("button", name="Launch", exact=True).click()
    expect(op_item(page, "Launch 2 from owned-small").locator(".state")).to_have_text("SUCCESS", timeout=60_000)

    page.get_by_role("link", name="Instances").click()
    expect(page.locator("tbody tr")).to_have_count(2)
    web1 = row(page, "web-1")
    expect(web1.locator(".state")).to_have_text("RUNNING")
    expect(web1).to_contain_text(owned)
    web1.get_by_role("checkbox").check()
    page.get_by_role("button", name="Stop", exact=True).click()
    expect(web1.locator(".state")).to_have_text("STOPPED", timeout=60_000)
    page.get_by_role("button", name="Console output").click()
    expect(page.get_by_label("Serial console output")).to_be_visible()
    page.get_by_role("button", name="Close").click()

    page.get_by_role("button", name="Create image…").click()
    page.get_by_label("Image name").fill("captured-web-1")
    page.get_by_role("button", name="Create image", exact=True).click()
    capture = op_item(page, "Capture web-1 → captured-web-1")
    expect(capture.locator(".state")).to_have_text("NORMAL", timeout=90_000)
    captured = capture.get_by_role("link").inner_text()
    assert describe(server, owner, captured)["SourceInstanceId"] == web1.locator(".id").inner_text()  # type: ignore[index]
    page.get_by_role("button", name="Reset to image…").click()
    page.get_by_label("Image", exact=True).select_option(captured)
    page.get_by_role("button", name="Reset", exact=True).click()
    expect(web1).to_contain_text(captured, timeout=60_000)

    page.screenshot(path=str(shots / "instances.png"))
    row(page, "web-2").get_by_role("checkbox").check()
    page.get_by_role("button", name="Terminate…").click()
    dialog = page.locator("dialog")
    expect(dialog).to_contain_text("Terminate these 2 instances?")
    expect(dialog).to_contain_text("web-1")
    expect(dialog).to_contain_text("web-2")
    page.get_by_role("button", name="Terminate 2 instances").click()
    expect(page.get_by_role("heading", name="No instances in ap-guangzhou")).to_be_visible(timeout=60_000)


def test_copy_to_two_regions_with_live_progress_across_a_reload(console, server: Server, disks: Path,  # type: ignore[no-untyped-def]
                                                                shots: Path) -> None:
    acct = server.account("carl")
    image_id = sdk_import(server, acct, disks, "big.qcow2", "to-copy")
    c = console()
    page = c.signed_in(acct)
    page.goto(f"{server.url}/console/#/images/{image_id}")
    page.get_by_role("button", name="Copy to regions").click()
    page.get_by_role("button", name="Copy", exact=True).click()
    expect(page.get_by_text("Choose at least one region.")).to_be_visible()
    page.get_by_role("checkbox", name="ap-shanghai").check()
    page.get_by_role("checkbox", name="ap-beijing").check()
    page.get_by_role("button", name="Copy", exact=True).click()
    expect(op_item(page, "Copy to-copy → ap-shanghai")).to_be_visible()
    expect(op_item(page, "Copy to-copy → ap-beijing")).to_be_visible()
    # The operations panel survives a reload and keeps following each copy.
    page.reload()
    ops = {r: op_item(page, f"Copy to-copy → {r}") for r in ("ap-shanghai", "ap-beijing")}
    seen: dict[str, list[float]] = {r: [] for r in ops}

    def progressed() -> bool:
        for r, op in ops.items():
            bar = op.locator("progress")
            if bar.count():
                seen[r].append(float(bar.get_attribute("value") or 0))
        return all(any(0 < v < 100 for v in values) for values in seen.values())

    wait_for(progressed, timeout=60, interval=0.2, what="both copies to show progress")
    page.screenshot(path=str(shots / "operations.png"))
    copies = {}
    for r, op in ops.items():
        expect(op.locator(".state")).to_have_text("NORMAL", timeout=90_000)
        copies[r] = op.get_by_role("link").inner_text()
        copy = describe(server, acct, copies[r], region=r)
        assert copy is not None and copy["SourceImageId"] == image_id and copy["ImageState"] == "NORMAL"

    page.locator("#region").select_option("ap-beijing")
    page.goto(f"{server.url}/console/#/images/{copies['ap-beijing']}")
    expect(page.locator("figure.lineage figcaption")).to_contain_text(f"Image in ap-guangzhou: {image_id}")


def test_share_and_unshare(console, server: Server, owner: Account, grantee: Account, disks: Path) -> None:  # type: ignore[no-untyped-def]
    image_id = sdk_import(server, owner, disks, "small.qcow2", "to-share")
    c = console()
    page = c.signed_in(owner)
    page.goto(f"{server.url}/console/#/images/{image_id}")
    expect(page.get_by_text("Not shared with any account.")).to_be_visible()
    page.get_by_label("Share with account IDs").fill("not-an-id")
    page.get_by_role("button", name="Share", exact=True).click()
    expect(page.get_by_text("Enter one or more numeric account IDs.")).to_be_visible()
    page.get_by_label("Share with account IDs").fill(owner.account_id)
    page.get_by_role("button", name="Share", exact=True).click()
    expect(page.get_by_role("alert")).to_contain_text("FailedOperation.AccountIsYourSelf")
    page.get_by_label("Share with account IDs").fill(grantee.account_id)
    page.get_by_role("button", name="Share", exact=True).click()
    expect(page.get_by_role("button", name=f"Unshare with {grantee.account_id}")).to_be_visible()

    g = console()
    gpage = g.signed_in(grantee)
    g.tab("Shared")
    expect(row(gpage, "to-share")).to_be_visible()

    page.get_by_role("button", name=f"Unshare with {grantee.account_id}").click()
    expect(page.get_by_text("Not shared with any account.")).to_be_visible()
    expect(row(gpage, "to-share")).to_have_count(0, timeout=20_000)  # the grantee's list is live too


def test_export_and_download(console, server: Server, owner: Account, owned: str, disks: Path,  # type: ignore[no-untyped-def]
                             tmp_path: Path) -> None:
    c = console()
    page = c.signed_in(owner)
    page.goto(f"{server.url}/console/#/images/{owned}")
    page.get_by_role("button", name="Export").click()
    page.get_by_label("Format").select_option("QCOW2")
    page.get_by_role("button", name="Export", exact=True).last.click()
    op = op_item(page, "Export owned-small (QCOW2)")
    expect(op.locator(".state")).to_have_text("SUCCESS", timeout=60_000)
    page.reload()
    button = op_item(page, "Export owned-small (QCOW2)").get_by_role("button", name=re.compile(r"^Download "))
    with page.expect_download() as info:
        button.click()
    out = tmp_path / info.value.suggested_filename
    info.value.save_as(out)
    assert out.name.endswith(".qcow2") and owned in out.name
    res = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(disks / "small.qcow2"), str(out)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_delete_one_or_many_with_a_confirmation(console, server: Server, disks: Path) -> None:  # type: ignore[no-untyped-def]
    acct = server.account("dora")
    a = sdk_import(server, acct, disks, "small.qcow2", "doomed-a")
    b = sdk_import(server, acct, disks, "small.qcow2", "doomed-b")
    keep = sdk_import(server, acct, disks, "small.qcow2", "kept")
    c = console()
    page = c.signed_in(acct)
    page.get_by_label(f"Select doomed-a ({a})").check()
    page.get_by_label(f"Select doomed-b ({b})").check()
    page.get_by_role("button", name="Delete selected (2)").click()
    dialog = page.locator("dialog")
    expect(dialog).to_contain_text("Delete these 2 images?")
    expect(dialog).to_contain_text(f"doomed-a ({a})")
    expect(dialog).to_contain_text(f"doomed-b ({b})")
    expect(dialog).not_to_contain_text("kept")
    expect(page.get_by_role("button", name="Cancel")).to_be_focused()  # Enter alone deletes nothing
    page.get_by_role("button", name="Cancel").click()
    assert describe(server, acct, a) is not None
    page.get_by_role("button", name="Delete selected (2)").click()
    page.get_by_role("button", name="Delete 2 images").click()
    expect(row(page, "doomed-a")).to_have_count(0)
    expect(row(page, "doomed-b")).to_have_count(0)
    assert describe(server, acct, a) is None and describe(server, acct, b) is None
    assert describe(server, acct, keep) is not None

    page.goto(f"{server.url}/console/#/images/{keep}")
    page.get_by_role("button", name="Delete").click()
    expect(page.locator("dialog")).to_contain_text(f"kept ({keep})")
    page.get_by_role("button", name="Delete image").click()
    expect(page.get_by_role("heading", name="No custom images in ap-guangzhou yet")).to_be_visible()
    assert describe(server, acct, keep) is None


# ------------------------------------------------------------------------------------------ manners


LABELLESS = """() => [...document.querySelectorAll('input, select, textarea, button, a[href]')]
    .filter((el) => el.offsetParent !== null || el.closest('dialog[open]'))
    .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                    && !el.getAttribute('aria-labelledby') && !(el.textContent || '').trim())
    .map((el) => el.outerHTML.slice(0, 120))"""


def test_labels_keyboard_narrow_window_and_screenshots(console, server: Server, owner: Account, owned: str,  # type: ignore[no-untyped-def]
                                                       shared: str, shots: Path) -> None:
    shots.mkdir(parents=True, exist_ok=True)
    c = console()
    page = c.open()
    expect(page.get_by_label("SecretId")).to_be_focused()
    page.screenshot(path=str(shots / "sign-in.png"))
    page.keyboard.type(owner.secret_id)
    page.keyboard.press("Tab")
    page.keyboard.type(owner.secret_key)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Images in ap-guangzhou", exact=True)).to_be_visible()
    expect(row(page, "owned-small")).to_be_visible()
    assert page.evaluate(LABELLESS) == []
    page.screenshot(path=str(shots / "images.png"))
    # Keyboard: the tabs move with the arrow keys; Tab reaches the image link, Enter opens it.
    page.get_by_role("tab", name="Custom").focus()
    page.keyboard.press("ArrowLeft")
    expect(page.get_by_role("tab", name="Public")).to_be_focused()
    expect(page.get_by_role("tab", name="Public")).to_have_attribute("aria-selected", "true")
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("tab", name="Custom")).to_have_attribute("aria-selected", "true")
    expect(row(page, "owned-small")).to_be_visible()
    link = page.get_by_role("link", name="owned-small")
    for _ in range(40):
        page.keyboard.press("Tab")
        if link.evaluate("el => el === document.activeElement"):
            break
    else:
        pytest.fail("Tab never reached the image link")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name=re.compile("owned-small"))).to_be_visible()
    expect(page.locator("figure.lineage")).to_be_visible()
    assert page.evaluate(LABELLESS) == []
    page.screenshot(path=str(shots / "image.png"), full_page=True)
    page.get_by_role("button", name="Launch instances").click()
    expect(page.get_by_label("Count", exact=True)).to_be_visible()
    assert page.evaluate(LABELLESS) == []
    page.keyboard.press("Escape")
    page.goto(f"{server.url}/console/#/images")
    page.get_by_role("button", name="Import image").click()
    expect(page.get_by_label("From a URL")).to_be_focused()
    assert page.evaluate(LABELLESS) == []
    page.screenshot(path=str(shots / "import.png"))
    page.keyboard.press("Escape")

    n = console(width=390, height=800)
    npage = n.signed_in(owner)
    expect(row(npage, "owned-small")).to_be_visible()
    assert npage.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "page scrolls sideways"
    npage.screenshot(path=str(shots / "narrow.png"), full_page=True)
    npage.goto(f"{server.url}/console/#/images/{shared}")
    expect(npage.get_by_role("heading", name=re.compile("shared-with-gabe"))).to_be_visible()
    assert npage.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "page scrolls sideways"


def test_a_large_upload_keeps_the_browser_memory_flat(console, server: Server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """768 MiB through File.slice() pieces: the browser's processes must not grow with the file."""
    acct = server.account("mia")
    size_mib = 768
    big = tmp_path / "large.raw"
    with big.open("wb") as f:
        f.write(os.urandom(4 * MiB))
        f.truncate(size_mib * MiB)
    c = console()
    page = c.signed_in(acct)

    def browser_rss() -> int:
        total = 0
        for p in psutil.Process().children(recursive=True):
            try:
                if "chrom" in p.name():
                    total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    base = browser_rss()
    samples = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append(browser_rss())
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        start_upload(page, big, "large")
        expect(op_item(page, "Import large")).to_be_visible(timeout=180_000)  # every byte is in
    finally:
        done.set()
        sampler.join()
    growth = max(samples) - base
    print(f"browser RSS {base / MiB:.0f} MiB before, peak growth {growth / MiB:.0f} MiB over {len(samples)} samples")
    assert growth < 160 * MiB, f"the browser grew {growth / MiB:.0f} MiB during a {size_mib} MiB upload"
    expect(row(page, "large").locator(".state")).to_have_text("NORMAL", timeout=120_000)
