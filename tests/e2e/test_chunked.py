"""Chunked import and export through the real CLI, server and qemu-img: only what is missing crosses,
and only what an account could already read is ever skipped."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import blake3
import httpx

from stratus.api.cvm.signing import sign
from stratus.domain import chunkframes
from stratus.domain.manifest import DiskManifest
from tests.conftest import Account, Server
from tests.hostile import _protective_mbr

MiB = 1024 * 1024
SIZE = 16 * MiB
DATA_CHUNKS = (0, 1, 2, 5, 9, 14)  # chunks of the test disk holding data; the rest are holes


def make_disk(path: Path, seed: int) -> Path:
    """A 16 MiB raw disk with a protective MBR and random data in DATA_CHUNKS."""
    with path.open("wb") as f:
        f.truncate(SIZE)
        for index in DATA_CHUNKS:
            f.seek(index * MiB)
            f.write(blake3.blake3(f"{seed}:{index}".encode()).digest(length=MiB))
        f.seek(446)
        f.write(_protective_mbr())  # a GPT protective MBR: the gate accepts it as a partitioned raw disk
    return path


def sent(res: subprocess.CompletedProcess[str], what: str = "sent") -> int:
    found = re.search(rf"chunk bytes {what}: (\d+)", res.stderr)
    assert found, res.stderr
    return int(found.group(1))


def chunked_import(server: Server, acct: Account, disk: Path, name: str, *extra: str
                   ) -> tuple[str, subprocess.CompletedProcess[str]]:
    res = server.run("image", "import", str(disk), "--name", name, *extra, env=acct.env())
    return res.stdout.split()[-1], res


def data_api(server: Server, acct: Account, method: str, path: str, body: bytes | None = b"",
             content_type: str = "application/json") -> httpx.Response:
    headers = sign(acct.secret_id, acct.secret_key, method=method, host=server.endpoint, path=path, query="",
                   content_type=content_type, body=body)
    headers["X-TC-Region"] = "ap-guangzhou"
    return httpx.request(method, server.url + path, content=body or b"", headers=headers)


def test_only_the_difference_crosses_and_only_your_own_chunks_are_skipped(server: Server, tmp_path: Path) -> None:
    alice, bob = server.account("chunk-alice"), server.account("chunk-bob")
    disk = make_disk(tmp_path / "v1.raw", seed=1)
    data = len(DATA_CHUNKS) * MiB
    # First import, from a qcow2 the client reads with its own qemu-img: every data chunk crosses once.
    qcow2 = tmp_path / "v1.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(disk), str(qcow2)], check=True)
    first, res = chunked_import(server, alice, qcow2, "v1")
    assert sent(res) == data
    # Re-importing the same disk (now raw) sends nothing.
    _again, res = chunked_import(server, alice, disk, "v1-again")
    assert sent(res) == 0
    # A qcow2 with compressed clusters can't be read in place: the client converts it to raw first.
    text = tmp_path / "text.raw"
    text.write_bytes(b"stratus " * (MiB // 8) + bytes(MiB))
    compressed = tmp_path / "text.qcow2"
    subprocess.run(["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", str(text), str(compressed)], check=True)
    _text, res = chunked_import(server, alice, compressed, "compressed")
    assert sent(res) == MiB and "convert " in res.stderr
    # Bob holds the same bytes, but may not learn that Alice has them: he sends every chunk.
    _bobs, res = chunked_import(server, bob, disk, "bobs-copy")
    assert sent(res) == data
    # A new version with 2 MiB changed costs 2 MiB.
    v2 = tmp_path / "v2.raw"
    v2.write_bytes(disk.read_bytes())
    with v2.open("r+b") as f:
        for index in (5, 12):
            f.seek(index * MiB)
            f.write(os.urandom(MiB))
    second, res = chunked_import(server, alice, v2, "v2")
    assert sent(res) == 2 * MiB

    # Export: only the data chunks, verified, into a sparse file equal to the disk.
    out = tmp_path / "first.raw"
    res = server.run("image", "export", first, "-o", str(out), env=alice.env())
    assert sent(res, "fetched") == data
    assert out.read_bytes() == disk.read_bytes()
    assert out.stat().st_blocks * 512 < SIZE // 2  # holes stayed holes
    # --base: only the chunks that differ from the old export are fetched.
    out2 = tmp_path / "second.raw"
    res = server.run("image", "export", second, "-o", str(out2), "--base", str(out), env=alice.env())
    assert sent(res, "fetched") == 2 * MiB
    assert out2.read_bytes() == v2.read_bytes()
    # In place (`--base FILE -o FILE`): the same 2 MiB, and the file is updated rather than copied.
    res = server.run("image", "export", second, "-o", str(out), "--base", str(out), env=alice.env())
    assert sent(res, "fetched") == 2 * MiB
    assert out.read_bytes() == v2.read_bytes()
    # qcow2 out, converted here: the same disk.
    out3 = tmp_path / "first.qcow2"
    server.run("image", "export", first, "-o", str(out3), "--format", "qcow2", env=alice.env())
    back = tmp_path / "back.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(out3), str(back)], check=True)
    assert back.read_bytes() == disk.read_bytes()

    # Bob may not read Alice's image; shared with him, it is for launching only.
    res = server.run("image", "export", first, "-o", str(tmp_path / "x.raw"), env=bob.env(),
                     check=False)
    assert res.returncode == 1 and "InvalidImageId.NotFound" in res.stderr
    server.run("image", "share", first, "--account", bob.account_id, env=alice.env())
    res = server.run("image", "export", first, "-o", str(tmp_path / "x.raw"), env=bob.env(),
                     check=False)
    assert res.returncode == 1 and "SharedImageExportUnsupported" in res.stderr
    # Nor chunk by chunk; Alice reads hers, but only chunks her image names.
    chunk0 = blake3.blake3(disk.read_bytes()[:MiB]).hexdigest()
    r = data_api(server, bob, "GET", f"/images/{first}/chunks/{chunk0}", body=None)
    assert r.status_code == 400 and "SharedImageExportUnsupported" in r.text
    r = data_api(server, alice, "GET", f"/images/{first}/chunks/{chunk0}", body=None)
    assert r.status_code == 200 and blake3.blake3(r.content).hexdigest() == chunk0
    r = data_api(server, alice, "GET", f"/images/{first}/chunks/{'0' * 63}1", body=None)
    assert r.status_code == 409 and "not a data chunk" in r.text


def test_an_interrupted_transfer_resumes_with_what_is_missing(server: Server, tmp_path: Path) -> None:
    carol = server.account("chunk-carol")
    disk = make_disk(tmp_path / "c.raw", seed=7)
    raw = disk.read_bytes()
    digests = [blake3.blake3(raw[i * MiB:(i + 1) * MiB]).hexdigest() if i in DATA_CHUNKS else None
               for i in range(SIZE // MiB)]
    manifest = DiskManifest(SIZE, MiB, digests).encode()
    # A run cut off after sending half its chunks (driven here through the data API).
    created = data_api(server, carol, "POST", "/uploads", json.dumps({"Size": SIZE}).encode()).json()["Response"]
    path = f"/uploads/{created['UploadId']}/manifest"
    needed = data_api(server, carol, "POST", path, manifest, "application/octet-stream").json()["Response"]["Needed"]
    assert sorted(needed) == sorted(d for d in digests if d)
    half = [(i, digests[i]) for i in DATA_CHUNKS[:3]]
    # A chunk whose bytes don't match its name, or that the manifest doesn't name, is refused.
    chunks = f"/uploads/{created['UploadId']}/chunks"
    bad = b"".join(chunkframes.encode([(digests[0], os.urandom(MiB))]))
    r = httpx.post(server.url + chunks, content=bad, headers=_unsigned(server, carol, chunks))
    assert r.status_code == 409 and "arrived damaged" in r.text
    stranger = os.urandom(MiB)
    r = httpx.post(server.url + chunks, headers=_unsigned(server, carol, chunks),
                   content=b"".join(chunkframes.encode([(blake3.blake3(stranger).hexdigest(), stranger)])))
    assert r.status_code == 409 and "not a data chunk" in r.text
    body = b"".join(chunkframes.encode([(d, raw[i * MiB:(i + 1) * MiB]) for i, d in half if d]))
    # A batch must say its size (it is read into a buffer of that size): not chunked transfer coding.
    r = httpx.post(server.url + chunks, content=iter([body]), headers=_unsigned(server, carol, chunks))
    assert r.status_code == 400 and "MissingParameter" in r.text and "Content-Length" in r.text
    r = httpx.post(server.url + chunks, content=body, headers=_unsigned(server, carol, chunks))
    assert r.status_code == 200, r.text
    # Run again: only the other half crosses.
    image_id, res = chunked_import(server, carol, disk, "resumed")
    assert sent(res) == (len(DATA_CHUNKS) - 3) * MiB
    # An export cut off with half of the file written fetches the rest.
    out = tmp_path / "out.raw"
    part = tmp_path / "out.raw.part"
    with part.open("wb") as f:
        f.truncate(SIZE)
        f.write(raw[: 3 * MiB])
    res = server.run("image", "export", image_id, "-o", str(out), env=carol.env())
    assert sent(res, "fetched") == (len(DATA_CHUNKS) - 3) * MiB
    assert out.read_bytes() == raw and not part.exists()


def _unsigned(server: Server, acct: Account, path: str) -> dict[str, str]:
    headers = sign(acct.secret_id, acct.secret_key, method="POST", host=server.endpoint, path=path, query="",
                   content_type="application/octet-stream", body=None)
    headers["X-TC-Region"] = "ap-guangzhou"
    return headers


def test_the_server_gate_sees_a_format_hidden_in_raw_chunks(server: Server, tmp_path: Path) -> None:
    dave = server.account("chunk-dave")
    disk = make_disk(tmp_path / "d.raw", seed=3)
    qcow2 = tmp_path / "d.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(disk), str(qcow2)], check=True)
    # Sent as RAW, the qcow2 file's bytes become a raw disk that starts with a qcow2 header: refused.
    padded = tmp_path / "hidden.raw"
    padded.write_bytes(qcow2.read_bytes())
    with padded.open("r+b") as f:
        f.truncate(-(-padded.stat().st_size // 512) * 512)
    res = server.run("image", "import", str(padded), "--name", "hidden", "--format", "RAW",
                     env=dave.env(), check=False)
    assert res.returncode != 0
    assert "qcow2" in res.stderr.lower()


def test_without_qemu_img_here_other_formats_go_through_the_server(server: Server, tmp_path: Path) -> None:
    erin = server.account("chunk-erin")
    disk = make_disk(tmp_path / "e.raw", seed=11)
    qcow2 = tmp_path / "e.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(disk), str(qcow2)], check=True)
    bare = {**erin.env(), "PATH": str(tmp_path / "empty")}  # a machine where `qemu-img` is not found
    # A qcow2 can't be read here: the whole file is uploaded and the server converts it, and the user is told.
    res = server.run("image", "import", str(qcow2), "--name", "e-qcow2", env=bare)
    image_id = res.stdout.split()[-1]
    assert "no qemu-img" in said(res) and "apt install qemu-utils" in said(res)
    assert "chunk bytes sent" not in res.stderr
    # A raw disk needs no qemu-img: still chunked, and it only sends what the server lacks (nothing: same disk).
    _same, res = chunked_import(server, erin, disk, "e-raw")
    assert sent(res) == 0
    # A qcow2 export is converted by the server (ExportImages) and downloaded.
    out = tmp_path / "back.qcow2"
    res = server.run("image", "export", image_id, "-o", str(out), "--format", "qcow2", env=bare)
    assert "no qemu-img" in said(res) and "chunk bytes fetched" not in res.stderr
    back = tmp_path / "back.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(out), str(back)], check=True)
    assert back.read_bytes() == disk.read_bytes()
    # --base can't fall back (the server knows nothing of the local file), nor be combined with --whole-file.
    res = server.run("image", "export", image_id, "-o", str(out), "--format", "qcow2", "--base", str(disk),
                     env=bare, check=False)
    assert res.returncode == 2 and "needs qemu-img here" in said(res)
    res = server.run("image", "export", image_id, "-o", str(back), "--base", str(disk), "--whole-file",
                     env=erin.env(), check=False)
    assert res.returncode == 2 and "drop --whole-file" in said(res)


def said(res: subprocess.CompletedProcess[str]) -> str:
    return " ".join(res.stderr.split())  # however the terminal width wrapped it
