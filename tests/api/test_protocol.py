"""The wire protocol (contract §2) against a real server: the official SDK, tccli and raw HTTP."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest
from tencentcloud.common import credential
from tencentcloud.common.common_client import CommonClient
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.cvm.v20170312 import models

from stratus.api.cvm.signing import sign
from tests.conftest import Account, Server


def sdk_error(fn, *args) -> TencentCloudSDKException:  # type: ignore[no-untyped-def]
    with pytest.raises(TencentCloudSDKException) as info:
        fn(*args)
    return info.value


@pytest.fixture(scope="module")
def alice(server: Server) -> Account:
    return server.account("alice")


def raw_post(server: Server, account: Account, action: str, body: bytes, *, timestamp: int | None = None,
             region: str | None = "ap-guangzhou", version: str = "2017-03-12", secret_key: str | None = None,
             headers: dict[str, str] | None = None) -> httpx.Response:
    h = sign(account.secret_id, secret_key or account.secret_key, method="POST", host=server.endpoint, body=body,
             timestamp=timestamp)
    h.update({"X-TC-Action": action, "X-TC-Version": version})
    if region:
        h["X-TC-Region"] = region
    h.update(headers or {})
    return httpx.post(server.url + "/", content=body, headers=h)


def test_describe_regions_and_zones(server: Server, alice: Account) -> None:
    resp = server.client(alice, region=None).DescribeRegions(models.DescribeRegionsRequest())
    assert [r.Region for r in resp.RegionSet] == ["ap-guangzhou", "ap-shanghai"]
    assert resp.TotalCount == 2 and all(r.RegionState == "AVAILABLE" for r in resp.RegionSet)
    zones = server.client(alice).DescribeZones(models.DescribeZonesRequest())
    assert [z.Zone for z in zones.ZoneSet] == ["ap-guangzhou-1", "ap-guangzhou-2"]
    zones = server.client(alice, region="ap-shanghai").DescribeZones(models.DescribeZonesRequest())
    assert [z.Zone for z in zones.ZoneSet] == ["ap-shanghai-1"]


def test_envelopes_are_exactly_what_the_sdk_parses(server: Server, alice: Account) -> None:
    ok = raw_post(server, alice, "DescribeRegions", b"{}")
    assert ok.status_code == 200 and ok.headers["content-type"] == "application/json"
    uuid.UUID(ok.json()["Response"]["RequestId"])
    err = raw_post(server, alice, "NoSuchAction", b"{}")
    assert err.status_code == 200 and err.headers["content-type"] == "application/json"
    body = err.json()["Response"]
    assert body["Error"]["Code"] == "InvalidAction" and "NoSuchAction" in body["Error"]["Message"]
    uuid.UUID(body["RequestId"])


def test_auth_failures(server: Server, alice: Account) -> None:
    ghost = Account("0", "AKID" + "x" * 32, "y" * 32, "ghost")
    assert sdk_error(server.client(ghost).DescribeZones, models.DescribeZonesRequest()).code == \
        "AuthFailure.SecretIdNotFound"
    wrong = Account(alice.account_id, alice.secret_id, "not-the-key", "alice")
    err = sdk_error(server.client(wrong).DescribeZones, models.DescribeZonesRequest())
    assert err.code == "AuthFailure.SignatureFailure"
    stale = raw_post(server, alice, "DescribeZones", b"{}", timestamp=int(time.time()) - 301)
    assert stale.json()["Response"]["Error"]["Code"] == "AuthFailure.SignatureExpire"
    future = raw_post(server, alice, "DescribeZones", b"{}", timestamp=int(time.time()) + 400)
    assert future.json()["Response"]["Error"]["Code"] == "AuthFailure.SignatureExpire"
    fresh = raw_post(server, alice, "DescribeZones", b"{}", timestamp=int(time.time()) - 250)
    assert "Error" not in fresh.json()["Response"]
    unsigned = httpx.post(server.url + "/", content=b"{}", headers={
        "Content-Type": "application/json", "X-TC-Action": "DescribeZones", "X-TC-Version": "2017-03-12",
        "X-TC-Timestamp": str(int(time.time()))})
    assert unsigned.json()["Response"]["Error"]["Code"] == "AuthFailure.InvalidAuthorization"
    # A body changed after signing fails.
    h = sign(alice.secret_id, alice.secret_key, method="POST", host=server.endpoint, body=b'{"Limit": 1}')
    h.update({"X-TC-Action": "DescribeImages", "X-TC-Version": "2017-03-12", "X-TC-Region": "ap-guangzhou"})
    tampered = httpx.post(server.url + "/", content=b'{"Limit": 2}', headers=h)
    assert tampered.json()["Response"]["Error"]["Code"] == "AuthFailure.SignatureFailure"


def test_revoked_key_is_refused_at_once(server: Server) -> None:
    bob = server.account("bob-keys")
    creds = json.loads(server.run("account", "key", "add", bob.name, "--data-dir", str(server.data_dir),
                                  "--config", str(server.config), "--json").stdout)
    second = Account(bob.account_id, creds["SecretId"], creds["SecretKey"], bob.name)
    server.client(second).DescribeZones(models.DescribeZonesRequest())
    server.run("account", "key", "revoke", second.secret_id, "--data-dir", str(server.data_dir),
               "--config", str(server.config))
    assert sdk_error(server.client(second).DescribeZones, models.DescribeZonesRequest()).code == \
        "AuthFailure.SecretIdNotFound"
    server.client(bob).DescribeZones(models.DescribeZonesRequest())  # the first key still works


def test_versions_actions_regions(server: Server, alice: Account) -> None:
    assert raw_post(server, alice, "DescribeZones", b"{}", version="2020-01-01").json()["Response"]["Error"][
        "Code"] == "NoSuchVersion"
    common = server.common(alice)
    assert sdk_error(common.call_json, "FrobnicateImages", {}).code == "InvalidAction"
    assert sdk_error(server.client(alice, region="mars-1").DescribeImages,
                     models.DescribeImagesRequest()).code == "InvalidRegion.NotFound"
    no_region = raw_post(server, alice, "DescribeImages", b"{}", region=None)
    assert no_region.json()["Response"]["Error"]["Code"] == "MissingParameter"


def test_parameter_validation(server: Server, alice: Account) -> None:
    common = server.common(alice)
    err = sdk_error(common.call_json, "ImportImage", {"OsType": "CentOS", "OsVersion": "7",
                                                      "Architecture": "x86_64", "ImageUrl": "http://x/y"})
    assert err.code == "MissingParameter" and "ImageName" in err.message
    assert sdk_error(common.call_json, "DescribeImages", {"Limit": "ten"}).code == "InvalidParameter"
    assert sdk_error(common.call_json, "DescribeImages", {"Limit": True}).code == "InvalidParameter"
    err = sdk_error(common.call_json, "DescribeImages", {"Bogus": 1})
    assert err.code == "UnknownParameter" and "Bogus" in err.message
    err = sdk_error(common.call_json, "DescribeImages", {"Filters": [{"Name": "image-type"}]})
    assert err.code == "MissingParameter" and "Filters.0.Values" in err.message
    bad_json = raw_post(server, alice, "DescribeImages", b"{not json")
    assert bad_json.json()["Response"]["Error"]["Code"] == "InvalidParameter"


def test_request_size_limit(server: Server, alice: Account) -> None:
    body = json.dumps({"ImageIds": ["img-aaaaaaaa"] * 90000}).encode()
    assert len(body) > 1024 * 1024
    resp = raw_post(server, alice, "DescribeImages", body)
    assert resp.status_code == 200
    assert resp.json()["Response"]["Error"]["Code"] == "RequestSizeLimitExceeded"


def test_get_form(server: Server, alice: Account) -> None:
    client = server.client(alice, reqMethod="GET")
    req = models.DescribeImagesRequest()
    req.from_json_string(json.dumps({"Filters": [{"Name": "image-type", "Values": ["PRIVATE_IMAGE", "SHARED_IMAGE"]}],
                                     "Limit": 10, "Offset": 0}))
    resp = client.DescribeImages(req)
    assert resp.TotalCount == 0 and resp.ImageSet == []
    err = sdk_error(client.DescribeImages, _limit_request(500))
    assert err.code == "InvalidParameterValue.InvalidParameterValueLimit"


def _limit_request(limit: int) -> models.DescribeImagesRequest:
    req = models.DescribeImagesRequest()
    req.Limit = limit
    return req


def test_scheme_in_endpoint_signs_the_literal_host(server: Server, alice: Account) -> None:
    # tccli's way: the endpoint carries http://, the SDK sends and signs `Host: http://127.0.0.1:port`.
    profile = ClientProfile(httpProfile=HttpProfile(endpoint=server.url))
    client = CommonClient("cvm", "2017-03-12", credential.Credential(alice.secret_id, alice.secret_key),
                          "ap-guangzhou", profile=profile)
    assert client.call_json("DescribeZones", {})["Response"]["TotalCount"] == 2


def test_tccli(server: Server, alice: Account, tmp_path) -> None:  # type: ignore[no-untyped-def]
    res = server.tccli(alice, "DescribeRegions", home=tmp_path)
    assert res.returncode == 0, res.stderr
    assert [r["Region"] for r in json.loads(res.stdout)["RegionSet"]] == ["ap-guangzhou", "ap-shanghai"]
    res = server.tccli(alice, "DescribeImages", "--ImageIds", '["img-bad"]', home=tmp_path)
    assert res.returncode == 255 and "InvalidImageId.Malformed" in (res.stderr + res.stdout)
