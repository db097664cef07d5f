"""RunInstances with one ClientToken, sent by several clients at once (a retry racing its original):
every answer names the same instances; never InternalError (on PostgreSQL the racers all passed the
token lookup, and all but one then failed inserting the token's row with IntegrityError)."""

from __future__ import annotations

import os
import threading
import uuid
from typing import Any

from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException

from tests.conftest import Account, Server
from tests.e2e.helpers import file_server, import_request, wait_image

RACERS = 8


def race(server: Server, account: Account, params: dict[str, Any]) -> list[dict[str, Any]]:
    """Send `params` as RunInstances from RACERS clients released at the same moment."""
    clients = [server.common(account) for _ in range(RACERS)]
    barrier = threading.Barrier(RACERS)
    answers: list[dict[str, Any]] = []

    def one(client: Any) -> None:
        barrier.wait()
        try:
            answers.append(client.call_json("RunInstances", params)["Response"])
        except TencentCloudSDKException as exc:
            answers.append({"Error": {"Code": exc.code, "Message": exc.message}})

    threads = [threading.Thread(target=one, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return answers


def test_concurrent_identical_client_tokens(server: Server, tmp_path: Any) -> None:
    alice = server.account("alice")
    (tmp_path / "disk.raw").write_bytes(os.urandom(1 << 20))
    with file_server(tmp_path) as (base, _):
        image_id = server.client(alice).ImportImage(import_request("race", f"{base}/disk.raw")).ImageId
        assert wait_image(server, alice, image_id)["ImageState"] == "NORMAL"
    for _ in range(3):  # each round is one more chance for the race to hit
        params = {"ImageId": image_id, "Placement": {"Zone": "ap-guangzhou-1"}, "ClientToken": uuid.uuid4().hex,
                  "InstanceCount": 2}
        answers = race(server, alice, params)
        assert len(answers) == RACERS
        assert not [a for a in answers if "Error" in a], answers
        assert len({tuple(a["InstanceIdSet"]) for a in answers}) == 1, answers
        listed = server.common(alice).call_json("DescribeInstances", {
            "Filters": [{"Name": "instance-id", "Values": answers[0]["InstanceIdSet"]}]})["Response"]
        assert listed["TotalCount"] == 2
