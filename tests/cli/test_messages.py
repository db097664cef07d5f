"""The `stratus` command line as a new user meets it: every message and exit code the README names.

Against a real `stratus serve` (the disk driver), through the installed `stratus` command, with its stdout not a
terminal (so lists come out as tab-separated rows).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests import hostile
from tests.conftest import STRATUS, Account, Server, free_port, log_text

MiB = 1 << 20


def stratus(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("STRATUS_", "TENCENTCLOUD_"))}
    full |= {"NO_PROXY": "127.0.0.1,localhost", **(env or {})}
    return subprocess.run([STRATUS, *args], env=full, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def alice(server: Server) -> Account:
    return server.account("alice-cli")


@pytest.fixture(scope="module")
def bob(server: Server) -> Account:
    return server.account("bob-cli")


def text_of(res: subprocess.CompletedProcess) -> str:
    return " ".join((res.stdout + res.stderr).split())  # rich wraps stderr at the terminal width


# ------------------------------------------------------------------------------------------- exit codes


def test_connection_refused_says_to_start_the_server_and_exits_5() -> None:
    port = free_port()
    res = stratus("image", "list", "--endpoint", f"http://127.0.0.1:{port}",
                  env={"TENCENTCLOUD_SECRET_ID": "AKIDx", "TENCENTCLOUD_SECRET_KEY": "k"})
    assert res.returncode == 5, res.stderr
    assert f"cannot reach http://127.0.0.1:{port}: is `stratus serve` (`make run`) running" in text_of(res)
    assert "refused" not in res.stderr


def test_uploads_to_a_server_that_is_not_there_exit_5_too(tmp_path: Path) -> None:
    disk = tmp_path / "d.raw"
    disk.write_bytes(bytes(MiB))
    port = free_port()
    res = stratus("image", "import", str(disk), "--name", "x", env={
        "STRATUS_ENDPOINT": f"http://127.0.0.1:{port}", "TENCENTCLOUD_SECRET_ID": "AKIDx",
        "TENCENTCLOUD_SECRET_KEY": "k", "XDG_CACHE_HOME": str(tmp_path)})
    assert res.returncode == 5 and "cannot reach" in res.stderr, res.stderr
    res = stratus("image", "export", "img-12345678", "-o", str(tmp_path / "out.raw"), env={
        "STRATUS_ENDPOINT": f"http://127.0.0.1:{port}", "TENCENTCLOUD_SECRET_ID": "AKIDx",
        "TENCENTCLOUD_SECRET_KEY": "k", "XDG_CACHE_HOME": str(tmp_path)})
    assert res.returncode == 5 and "cannot reach" in res.stderr, res.stderr


def test_missing_credentials_say_how_to_get_them() -> None:
    res = stratus("image", "list")
    assert res.returncode == 2
    assert 'eval "$(stratus account create NAME)"' in text_of(res)


def test_usage_errors_exit_2() -> None:
    res = stratus("image", "show")
    assert res.returncode == 2 and "IMAGE_ID" in res.stderr


# ------------------------------------------------------------------------------------------- the catalog


def test_admin_verbs_refuse_a_new_empty_catalog_unless_init(tmp_path: Path) -> None:
    res = stratus("account", "create", "alice", cwd=tmp_path)
    assert res.returncode == 2
    assert f"no catalog at {tmp_path / 'var' / 'stratus.db'}" in text_of(res) and "--data-dir" in text_of(res)
    assert not (tmp_path / "var" / "stratus.db").exists()  # nothing was made
    for verb in (["account", "list"], ["fsck"], ["gc", "--dry-run"], ["demo"]):
        res = stratus(*verb, "--data-dir", str(tmp_path / "elsewhere"))
        assert res.returncode == 2 and "no catalog at" in text_of(res), verb
    assert not (tmp_path / "elsewhere").exists()

    # --init makes it, says where, and prints only the lines `eval` needs on stdout.
    script = f'eval "$({STRATUS} account create alice --init)" && echo "id=$TENCENTCLOUD_SECRET_ID"'
    res = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={k: v for k, v in os.environ.items() if not k.startswith(("STRATUS_", "TENCENTCLOUD_"))})
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("id=AKID")
    assert f"catalog: {tmp_path / 'var' / 'stratus.db'}" in res.stderr
    listed = stratus("account", "list", cwd=tmp_path)
    assert listed.returncode == 0 and listed.stdout.split("\t")[1] == "alice"
    assert f"catalog: {tmp_path / 'var' / 'stratus.db'}" in listed.stderr


def test_a_key_from_another_data_directory_is_explained(server: Server, tmp_path: Path) -> None:
    made = stratus("account", "create", "stray", "--init", "--json", "--data-dir", str(tmp_path / "other"))
    creds = json.loads(made.stdout)
    res = stratus("image", "list", env={"STRATUS_ENDPOINT": server.url, "TENCENTCLOUD_SECRET_ID": creds["SecretId"],
                                        "TENCENTCLOUD_SECRET_KEY": creds["SecretKey"]})
    assert res.returncode == 1
    assert "AuthFailure.SecretIdNotFound" in res.stderr and "another data directory" in text_of(res)


# ------------------------------------------------------------------------------------------- imports


def test_a_tiny_file_that_is_no_disk_is_called_that(server: Server, alice: Account, tmp_path: Path) -> None:
    note = tmp_path / "notes.txt"
    note.write_text("my disk is on the other machine\n")
    res = server.run("image", "import", str(note), "--name", "notes", env=alice.env(), check=False)
    assert res.returncode == 3
    assert "this is not a disk image" in text_of(res) and "truncate" not in res.stderr


def test_export_of_a_failed_import_says_delete_and_import_again(server: Server, alice: Account,
                                                                 tmp_path: Path) -> None:
    note = tmp_path / "again.txt"
    note.write_text("not a disk\n")
    # The whole file reaches the server (the chunked path refuses it here), which fails the import.
    server.run("image", "import", str(note), "--name", "failed-one", "--whole-file", env=alice.env(), check=False)
    listed = server.run("image", "list", "--json", env=alice.env()).stdout
    image_id = next(i["ImageId"] for i in json.loads(listed) if i["ImageName"] == "failed-one")
    res = server.run("image", "export", image_id, "-o", str(tmp_path / "out.raw"), env=alice.env(), check=False)
    assert res.returncode == 1
    message = text_of(res)
    assert "IMPORTFAILED" in message and f"`stratus image delete {image_id}`" in message
    assert "import the file again" in message and "wait until" not in message


def test_a_raw_disk_without_boot_sector_imports_with_a_warning(server: Server, alice: Account,
                                                              tmp_path: Path) -> None:
    bare = tmp_path / "bare.raw"
    bare.write_bytes(b"data" * (MiB // 4))
    res = server.run("image", "import", str(bare), "--name", "bare", env=alice.env())
    image_id = res.stdout.strip()
    assert image_id.startswith("img-")
    assert "no partition table or boot sector" in text_of(res)
    shown = json.loads(server.run("image", "show", image_id, "--json", env=alice.env()).stdout)
    assert shown["ImageState"] == "NORMAL" and shown["ImageStateReason"].startswith("warning: system disk: ")
    # A disk with a partition table imports without one.
    gpt = server.run("image", "import", str(hostile.mbr_disk(tmp_path)), "--name", "gpt", env=alice.env())
    assert "boot sector" not in gpt.stderr


def test_not_found_names_the_region_where_the_image_is(server: Server, alice: Account, bob: Account,
                                                       tmp_path: Path) -> None:
    disk = hostile.mbr_disk(tmp_path)
    image_id = server.run("image", "import", str(disk), "--name", "in-shanghai", "--region", "ap-shanghai",
                          env=alice.env()).stdout.strip()
    res = server.run("image", "show", image_id, env=alice.env(), check=False)
    assert res.returncode == 1
    assert "it is in ap-shanghai" in text_of(res) and "--region ap-shanghai" in text_of(res)
    res = server.run("image", "delete", image_id, env=alice.env(), check=False)  # the server's message too
    assert res.returncode == 1 and "InvalidImageId.NotFound" in res.stderr and "it is in ap-shanghai" in text_of(res)
    # Someone who can't see it learns nothing.
    res = server.run("image", "delete", image_id, env=bob.env(), check=False)
    assert res.returncode == 1 and "ap-shanghai" not in res.stderr


def test_sharing_refusals_name_the_stratus_verb(server: Server, alice: Account, bob: Account,
                                               tmp_path: Path) -> None:
    image_id = server.run("image", "import", str(hostile.mbr_disk(tmp_path)), "--name", "shared",
                          env=alice.env()).stdout.strip()
    server.run("image", "share", image_id, "--account", bob.account_id, env=alice.env())
    res = server.run("image", "delete", image_id, env=alice.env(), check=False)
    assert res.returncode == 1
    assert f"`stratus image unshare {image_id} --account ACCOUNT_ID`" in text_of(res)


# ------------------------------------------------------------------------------------------- output


def test_lists_are_tab_separated_with_full_ids_when_piped(server: Server, alice: Account, tmp_path: Path) -> None:
    image_id = server.run("image", "import", str(hostile.mbr_disk(tmp_path, seed=3)), "--name", "a-name-long-"
                          + "x" * 40, env=alice.env()).stdout.strip()
    rows = [line.split("\t") for line in server.run("image", "list", env=alice.env()).stdout.splitlines()]
    assert [image_id, "a-name-long-" + "x" * 40, "PRIVATE_IMAGE", "NORMAL"] in [r[:4] for r in rows]
    assert all(len(r) == 7 and r[0].startswith("img-") and len(r[0]) == 12 for r in rows)


def test_every_list_and_show_verb_takes_json(server: Server, alice: Account) -> None:
    for verb in (["image", "list"], ["instance", "list"], ["image", "shares", "img-00000000"],
                 ["image", "show", "img-00000000"], ["instance", "show", "ins-00000000"]):
        res = server.run(*verb, "--json", env=alice.env(), check=False)
        assert "No such option" not in res.stderr, verb
        if verb[1] == "list":
            assert isinstance(json.loads(res.stdout), list), verb
    res = server.run("account", "list", "--json", "--data-dir", str(server.data_dir), "--config",
                     str(server.config))
    assert any(a["Name"] == "alice-cli" for a in json.loads(res.stdout))


def test_console_on_the_disk_driver_says_there_is_none(server: Server, alice: Account, tmp_path: Path) -> None:
    image_id = server.run("image", "import", str(hostile.mbr_disk(tmp_path, seed=5)), "--name", "for-console",
                          env=alice.env()).stdout.strip()
    instance_id = server.run("instance", "run", "--image", image_id, env=alice.env()).stdout.strip()
    res = server.run("instance", "console", instance_id, env=alice.env(), check=False)
    assert res.returncode == 3 and res.stdout == ""
    assert "disk driver, which has no console" in text_of(res)
    server.run("instance", "terminate", instance_id, env=alice.env())


def test_the_server_first_lines_say_where_and_what_next(server: Server) -> None:
    lines = log_text(server.log).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Stratus serves "))
    assert lines[start].startswith(f"Stratus serves {server.url} (data directory {server.data_dir}")
    following = "\n".join(lines[start:start + 6])
    # The server runs with --config and a data directory elsewhere: the hints carry both, or they would make
    # keys in another catalog.
    assert f'eval "$(stratus account create alice --data-dir {server.data_dir} --config {server.config})"' \
        in following
    assert f"STRATUS_ENDPOINT={server.url}" in following
