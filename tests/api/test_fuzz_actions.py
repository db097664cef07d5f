"""Property-based fuzzing of the CVM endpoint: no request, however hostile, gets InternalError.

Hypothesis drives the real ASGI app (`stratus.api.app.create_app`, through Starlette's TestClient) on a
real catalog that a real `stratus serve` has put a NORMAL image and an instance in. Requests are TC3-signed
so they reach the action code; for each action the parameters come from the action's own schema (the one
the endpoint validates with), mixed with wrong types, unknown keys, huge and negative integers, strings
of every kind, and ids that exist. They go as JSON (POST) and flattened (GET). Garbage requests (bytes,
deep nesting, invalid UTF-8, repeated GET keys, unsigned) get the same check: a contract error code,
HTTP 200, the JSON envelope, no traceback, and the server still answering afterwards.

Budget: STRATUS_FUZZ_EXAMPLES examples per action (default 12, fixed seed: `make test`); `make fuzz`
runs 200 per action with a random seed. Examples that once found a bug stay as @example.
"""

from __future__ import annotations

import json
import os
import re
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import blake3
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from stratus.api.app import create_app
from stratus.api.cvm.params import ANY
from stratus.api.cvm.registry import ACTIONS
from stratus.api.cvm.signing import sign
from stratus.config import load_settings
from stratus.domain import errors
from stratus.domain.manifest import DiskManifest
from stratus.service.runtime import prepare
from tests.conftest import ROOT, Account, make_server
from tests.e2e.helpers import file_server, import_request, wait_image

EXAMPLES = int(os.environ.get("STRATUS_FUZZ_EXAMPLES", "12"))
LONG = EXAMPLES > 50  # `make fuzz`: a random seed each run, so each run looks somewhere new
FUZZ = settings(max_examples=EXAMPLES, derandomize=not LONG, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much, HealthCheck.large_base_example])
HOST = "testserver"
CODES = {cls.code for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, errors.CvmError)}


class World:
    """The app under test, an account, and ids that exist in its catalog."""

    def __init__(self, client: TestClient, alice: Account, image_id: str, instance_id: str) -> None:
        self.client, self.alice, self.image_id, self.instance_id = client, alice, image_id, instance_id


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("fuzz")
    # Thousands of calls from one account in seconds: the per-account rate limit (tests/api/test_rate_limit.py)
    # is off here, or the fuzzers would see RequestLimitExceeded instead of the answers they check.
    srv = make_server(tmp, db_url, config_extra="requests_per_second = 0\n",
                      env_extra={"STRATUS_IMPORT_URL_ALLOW": "127.0.0.2/32"})
    srv.start()
    try:
        alice = srv.account("alice")
        srv.account("ops", operator=True)
        files = tmp / "files"
        files.mkdir()
        (files / "disk.raw").write_bytes(os.urandom(1 << 20))
        with file_server(files) as (base, _):
            image_id = srv.client(alice).ImportImage(import_request("fuzz-base", f"{base}/disk.raw")).ImageId
            assert wait_image(srv, alice, image_id)["ImageState"] == "NORMAL"
        run = srv.common(alice).call_json("RunInstances", {"ImageId": image_id,
                                                            "Placement": {"Zone": "ap-guangzhou-1"}})
        instance_id = run["Response"]["InstanceIdSet"][0]
    finally:
        srv.stop()  # from here on only the in-process app touches the catalog: no workers, no races
    svc = prepare(load_settings(srv.data_dir, srv.config, env={**os.environ, **srv.env}))
    with TestClient(create_app(svc), base_url=f"http://{HOST}") as client:
        yield World(client, alice, image_id, instance_id)
    svc.db.dispose()


# --------------------------------------------------------------------------- strategies

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
INTS = st.one_of(
    st.integers(-2, 120),
    st.sampled_from([2**31, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**30, -(10**30)]),
    st.integers(),
)


def strings(world: World) -> st.SearchStrategy[str]:
    known = [
        world.image_id, world.instance_id, "img-00000000", "img-", "ins-00000000", "ap-guangzhou",
        "ap-guangzhou-1", "ap-shanghai", "stratus-exports", "RAW", "QCOW2", "VMDK", "VHD", "SOFT", "HARD",
        "true", "false", "S5.SMALL1", "SR1.MEDIUM4", "CentOS", "7", "x86_64", "arm", "UEFI", "BYOL",
        "image-id", "image-type", "image-name", "tag:k", "instance-id", "zone", "PRIVATE_IMAGE", "SHARE",
        "CANCEL", "instance", "image", "aGVsbG8=", "http://127.0.0.2:9/disk.raw", "upload://up-00000000",
        "ftp://x/y", "http://user:pw@127.0.0.2/x.iso", "%", "_", "\\", "' OR 1=1 --", "\x00", "\ud7ff\U0010ffff",
        "a" * 300, "2026-01-01T00:00:00Z",
    ]
    return st.one_of(st.sampled_from(known), st.text(max_size=40))


def value_for(spec: Any, world: World) -> st.SearchStrategy[Any]:
    """A value of the schema's type, or now and then of any type at all."""
    if spec is ANY:
        return JSON
    if isinstance(spec, list):
        right: st.SearchStrategy[Any] = st.lists(value_for(spec[0], world), max_size=4)
    elif isinstance(spec, dict):
        right = st.fixed_dictionaries({}, optional={k: value_for(v, world) for k, v in spec.items()}).flatmap(
            lambda d: st.dictionaries(st.sampled_from(["Bogus", "a.b", ""]), JSON, max_size=1).map(
                lambda extra: {**d, **extra}) if d else st.just(d))
    elif spec is int:
        right = INTS
    elif spec is bool:
        right = st.booleans()
    elif spec is float:
        right = st.floats()
    else:
        right = strings(world)
    return st.one_of(right, right, right, JSON)


def params_for(action: str, world: World) -> st.SearchStrategy[dict[str, Any]]:
    schema = ACTIONS[action].schema
    fields = {k: value_for(v, world) for k, v in schema.fields.items()}
    required = {k: fields[k] for k in schema.required}
    optional = {k: v for k, v in fields.items() if k not in required}
    return st.fixed_dictionaries(required, optional=optional)


def flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    """JSON → `A.0.B=x` pairs, as tccli sends a GET."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in flatten(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in flatten(v, f"{prefix}.{i}")]
    if value is None:
        return []
    return [(prefix, json.dumps(value) if isinstance(value, bool) else str(value))]


REGIONS = st.one_of(st.sampled_from(["ap-guangzhou", "ap-shanghai", "", "nowhere"]),
                    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=12))


# --------------------------------------------------------------------------- requests and the property


def post(world: World, action: str | None, body: bytes, region: str | None = "ap-guangzhou",
         content_type: str = "application/json", signed: bool = True) -> Any:
    headers = sign(world.alice.secret_id, world.alice.secret_key, method="POST", host=HOST, body=body,
                   content_type=content_type) if signed else {"Content-Type": content_type}
    headers["X-TC-Version"] = "2017-03-12"
    if action is not None:
        headers["X-TC-Action"] = action
    if region:
        headers["X-TC-Region"] = region
    return world.client.post("/", content=body, headers=headers)


def get(world: World, action: str, query: str, region: str | None = "ap-guangzhou") -> Any:
    headers = sign(world.alice.secret_id, world.alice.secret_key, method="GET", host=HOST, query=query,
                   content_type="application/x-www-form-urlencoded")
    headers.update({"X-TC-Version": "2017-03-12", "X-TC-Action": action})
    if region:
        headers["X-TC-Region"] = region
    return world.client.get("/?" + query if query else "/", headers=headers)


def contract_answer(resp: Any) -> dict[str, Any]:
    """The property: HTTP 200, the JSON envelope, a RequestId, a contract code that isn't InternalError."""
    assert resp.status_code == 200, resp.text[:500]
    assert resp.headers["content-type"] == "application/json"
    assert "Traceback" not in resp.text and 'File "' not in resp.text, resp.text[:2000]
    body = resp.json()["Response"]
    assert isinstance(body.get("RequestId"), str)
    if "Error" in body:
        assert body["Error"]["Code"] in CODES, body
        assert body["Error"]["Code"] != "InternalError", body
        assert body["Error"]["Message"]
    return body


def still_answers(world: World) -> None:
    assert "Error" not in contract_answer(post(world, "DescribeRegions", b"{}", region=None))


def encode_query(pairs: list[tuple[str, str]]) -> str:
    return "&".join(f"{quote(k, safe='.')}={quote(v, safe='')}" for k, v in pairs)


# --------------------------------------------------------------------------- the fuzzers


def test_every_documented_action_is_fuzzed() -> None:
    documented = set(re.findall(r"^\| `([A-Z][A-Za-z]+)` \|", (ROOT / "docs/api.md").read_text(), re.M))
    assert set(ACTIONS) <= documented, set(ACTIONS) - documented


def test_the_fixture_reaches_real_objects(world: World) -> None:
    """First, while they exist: the fuzz is only worth something if signed requests reach the action code
    with ids that exist."""
    body = contract_answer(post(world, "DescribeImages", json.dumps({"ImageIds": [world.image_id]}).encode()))
    assert body["ImageSet"][0]["ImageState"] == "NORMAL"
    body = contract_answer(post(world, "DescribeInstances",
                                json.dumps({"InstanceIds": [world.instance_id]}).encode()))
    assert body["TotalCount"] == 1


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_json_bodies(world: World, action: str) -> None:
    @FUZZ
    @given(params=params_for(action, world), region=REGIONS)
    def check(params: dict[str, Any], region: str) -> None:
        contract_answer(post(world, action, json.dumps(params).encode(), region=region))

    check()
    still_answers(world)


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_flattened_queries(world: World, action: str) -> None:
    @FUZZ
    @given(params=params_for(action, world), data=st.data())
    def check(params: dict[str, Any], data: st.DataObject) -> None:
        pairs = flatten(params)
        if pairs and data.draw(st.booleans()):  # a repeated or conflicting key, as a hostile client sends
            key, _ = data.draw(st.sampled_from(pairs))
            pairs.append((data.draw(st.sampled_from([key, key + ".0", key.rsplit(".", 1)[0]])), "x"))
        contract_answer(get(world, action, encode_query(pairs)))

    check()
    still_answers(world)


# Bodies that are not what the schema expects at all. The @examples are regressions: those with a comment
# ended in InternalError before the fix, the others pin down what the contract answers.
@FUZZ
@given(action=st.sampled_from(sorted(ACTIONS)), body=st.one_of(
    st.binary(max_size=64), JSON.map(lambda v: json.dumps(v).encode()),
    st.integers(1, 200_000).map(lambda n: b"[" * n + b"]" * n),
))
@example(action="DescribeImages", body=b"[" * 100_000 + b"]" * 100_000)  # RecursionError in json.loads
@example(action="DescribeImages", body=b'{"Offset": ' + b"9" * 5000 + b"}")  # over Python's int digit limit
@example(action="DescribeImages", body=b'{"ImageIds": ["\xff\xfe"]}')  # invalid UTF-8
@example(action="DescribeImages", body=b'{"Limit": 9223372036854775808}')  # beyond int64: OverflowError
@example(action="DescribeImages", body=b'{"Offset": 9223372036854775808}')
@example(action="DescribeImages", body=b'{"Offset": 9223372036854775807}')  # Offset + Limit overflowed SQL LIMIT
@example(action="DescribeInstances", body=b'{"Offset": -9223372036854775809}')
@example(action="DescribeTasks", body=b'{"TaskIds": [9223372036854775808]}')
@example(action="GetInstanceConsoleOutput", body=b'{"InstanceId": "ins-00000000", "MaxBytes": -1}')
@example(action="DescribeImages", body=json.dumps({"ImageIds": ["img-00000000"] * 40000}).encode())
@example(action="DescribeInstances", body=json.dumps({"InstanceIds": ["ins-00000000"] * 40000}).encode())
@example(action="DeleteImages", body=json.dumps({"ImageIds": ["img-00000000"] * 40000}).encode())
@example(action="TerminateInstances", body=json.dumps({"InstanceIds": ["ins-00000000"] * 40000}).encode())
@example(action="DescribeImages", body=b'{"Filters": [{"Name": "image-id", "Values": [null]}]}')
@example(action="DescribeImageFromFamily", body=b'{"ImageFamily": "\\u0000"}')  # PostgreSQL: NUL in text
@example(action="DescribeImageFromFamily", body=b'{"ImageFamily": "\\ud800"}')  # a lone surrogate: not UTF-8
@example(action="DescribeImages", body=b'{"Filters": [{"Name": "image-name", "Values": ["\\ud800"]}]}')
def test_garbage_bodies(world: World, action: str, body: bytes) -> None:
    contract_answer(post(world, action, body))


@FUZZ
@given(action=st.sampled_from(sorted(ACTIONS)), query=st.one_of(
    st.text(max_size=80).map(lambda s: quote(s, safe="=&.%")),
    st.lists(st.tuples(st.sampled_from(["ImageIds", "ImageIds.0", "ImageIds.1", "Filters.0.Name",
                                        "Filters.0.Values.0", "Filters.0", "Filters", "Offset", "Limit",
                                        "InstanceIds.0", "Placement.Zone", "Placement", "X.Y.Z"]),
                       st.text(max_size=10)), max_size=6).map(encode_query),
))
@example(action="DescribeImages", query="ImageIds=x&ImageIds.0=y")  # TypeError: str item assignment
@example(action="DescribeImages", query="ImageIds.0=y&ImageIds=x")
@example(action="DescribeImages", query="Filters.0.Name=image-id&Filters.0=x")
@example(action="DescribeImages", query="Offset=1&Offset=2")
@example(action="DescribeImages", query="Offset=9223372036854775808")
@example(action="DescribeImages", query="Offset=" + "9" * 5000)  # over Python's int digit limit
@example(action="DescribeImages", query="ImageIds.0=%FF%FE")  # invalid UTF-8
@example(action="DescribeImages", query="ImageIds.1001=x")
@example(action="DescribeImages", query="ImageIds.%D9%A3=x")  # a non-ASCII digit: str.isdigit() is True
@example(action="DescribeImages", query="=x&.=y&..=z")
def test_garbage_queries(world: World, action: str, query: str) -> None:
    contract_answer(get(world, action, query))


@FUZZ
@given(headers=st.dictionaries(
    st.sampled_from(["X-TC-Action", "X-TC-Version", "X-TC-Region", "X-TC-Timestamp", "Authorization",
                     "Content-Type", "X-TC-Content-SHA256"]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=60), max_size=5))
@example(headers={"X-TC-Timestamp": "9" * 400})  # OverflowError: int too large to convert to float
@example(headers={"X-TC-Timestamp": "\xb2"})  # a latin-1 superscript two: isdigit() but not int()
@example(headers={"X-TC-Timestamp": "-1"})
@example(headers={"Authorization": "TC3-HMAC-SHA256 Credential=/, SignedHeaders=, Signature="})
@example(headers={"Content-Type": "application/json; charset=\xff"})
def test_unsigned_and_mangled_headers(world: World, headers: dict[str, str]) -> None:
    base = sign(world.alice.secret_id, world.alice.secret_key, method="POST", host=HOST, body=b"{}")
    base.update({"X-TC-Action": "DescribeImages", "X-TC-Version": "2017-03-12", "X-TC-Region": "ap-guangzhou"})
    raw = {k: v.encode() for k, v in base.items()} | {k: v.encode("latin-1") for k, v in headers.items()}
    contract_answer(world.client.post("/", content=b"{}", headers=raw))


def test_still_answering_under_concurrent_garbage(world: World) -> None:
    bodies = [b"[" * 50_000, b"\xff" * 100, b'{"Offset": 99999999999999999999}', b"{}"]
    failures: list[BaseException] = []

    def hammer(body: bytes) -> None:
        try:
            for _ in range(5):
                contract_answer(post(world, "DescribeImages", body))
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=hammer, args=(b,)) for b in bodies * 2]
    start = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures[0]
    assert time.time() - start < 60
    still_answers(world)


# --------------------------------------------------------------------------- the data API (docs/api.md)


def data_answer(resp: Any) -> None:
    """The data API answers with real HTTP statuses, but never 5xx and never InternalError."""
    assert resp.status_code < 500, resp.text[:500]
    assert "Traceback" not in resp.text
    if resp.status_code >= 400:
        error = resp.json()["Response"]["Error"]
        assert error["Code"] in CODES and error["Code"] != "InternalError", error


@FUZZ
@given(body=st.one_of(
    st.fixed_dictionaries({}, optional={"Size": st.one_of(INTS, JSON), "Name": st.one_of(st.text(), JSON),
                                        "Format": st.one_of(st.sampled_from(["QCOW2", "raw", "vhdx"]), JSON)}
                          ).map(lambda d: json.dumps(d).encode()),
    JSON.map(lambda v: json.dumps(v).encode()), st.binary(max_size=40)))
@example(body=b'{"Size": 1, "Format": 5}')  # Format was not type-checked
@example(body=b'{"Size": 1, "Name": ["a"]}')  # nor Name
@example(body=b'{"Size": 9223372036854775808}')
@example(body=b'{"Size": 1, "Name": "\\u0000"}')
@example(body=b"[1]")  # AttributeError: list has no get() -> HTTP 500
@example(body=b"[" * 100_000)  # RecursionError -> HTTP 500
def test_upload_creation_bodies(world: World, body: bytes) -> None:
    headers = sign(world.alice.secret_id, world.alice.secret_key, method="POST", host=HOST, path="/uploads",
                   body=body)
    data_answer(world.client.post("/uploads", content=body, headers=headers))


@FUZZ
@given(offset=st.one_of(st.text(max_size=25), st.integers().map(str)))
@example(offset="\xb2")  # isdigit() but not int(): ValueError -> HTTP 500
@example(offset="9" * 30)  # beyond int64
def test_upload_append_offsets(world: World, offset: str) -> None:
    body = json.dumps({"Size": 4096}).encode()
    headers = sign(world.alice.secret_id, world.alice.secret_key, method="POST", host=HOST, path="/uploads",
                   body=body)
    upload_id = world.client.post("/uploads", content=body, headers=headers).json()["Response"]["UploadId"]
    query = "offset=" + quote(offset, safe="")
    headers = sign(world.alice.secret_id, world.alice.secret_key, method="PUT", host=HOST,
                   path=f"/uploads/{upload_id}", query=query, content_type="application/octet-stream", body=None)
    data_answer(world.client.put(f"/uploads/{upload_id}?{query}", content=b"x" * 512, headers=headers))


_UPLOADS: dict[tuple[int, str], str] = {}


def _chunked_upload(world: World, purpose: str) -> str:
    """One upload per test (reused across examples: uploads not yet imported are limited per account)."""
    key = (id(world), purpose)
    if key not in _UPLOADS:
        body = json.dumps({"Size": 1 << 20}).encode()
        headers = sign(world.alice.secret_id, world.alice.secret_key, method="POST", host=HOST, path="/uploads",
                       body=body)
        _UPLOADS[key] = world.client.post("/uploads", content=body, headers=headers).json()["Response"]["UploadId"]
    return _UPLOADS[key]


def _region_signed(world: World, path: str, body: bytes | None) -> dict[str, str]:
    headers = sign(world.alice.secret_id, world.alice.secret_key, method="POST", host=HOST, path=path,
                   content_type="application/octet-stream", body=body)
    headers["X-TC-Region"] = "ap-guangzhou"
    return headers


@FUZZ
@given(body=st.one_of(st.binary(max_size=120),
                      st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1), st.binary(max_size=80))
                      .map(lambda t: b"SMF2" + struct.pack(">QI", t[0], t[1]) + t[2])))
@example(body=b"SMF2" + struct.pack(">QI", 1 << 20, 1 << 20) + b"\x01" + bytes(32))  # a zero digest
@example(body=b"SMF2" + struct.pack(">QI", 1 << 20, 1 << 16) + bytes(2))  # another chunk size
@example(body=b"SMF2" + struct.pack(">QI", 1000, 1 << 20) + bytes(1))  # not whole sectors
def test_chunked_manifest_bodies(world: World, body: bytes) -> None:
    path = f"/uploads/{_chunked_upload(world, 'manifest')}/manifest"
    data_answer(world.client.post(path, content=body, headers=_region_signed(world, path, body)))


@FUZZ
@given(body=st.one_of(st.binary(max_size=200),
                      st.tuples(st.binary(min_size=32, max_size=32), st.integers(0, 2**32 - 1), st.binary(max_size=64))
                      .map(lambda t: t[0] + struct.pack(">I", t[1]) + t[2])))
def test_chunk_batches(world: World, body: bytes) -> None:
    chunk = b"\x01" * (1 << 20)
    manifest = DiskManifest(1 << 20, 1 << 20, [blake3.blake3(chunk).hexdigest()]).encode()
    path = f"/uploads/{_chunked_upload(world, 'chunks')}/manifest"
    world.client.post(path, content=manifest, headers=_region_signed(world, path, manifest))
    path = path.replace("/manifest", "/chunks")
    data_answer(world.client.post(path, content=body, headers=_region_signed(world, path, None)))
