"""A real VM with the qemu driver (TCG), end to end through the official SDK.

A tiny bootable image (Debian's cloud kernel and a busybox initramfs inside an ext4 root made with
`mke2fs -d`) is imported; an instance whose UserData writes a marker file runs; an image is captured
from it while it runs (paused over QMP for the capture); a new instance from that image finds the marker;
ResetInstance to the original image and the marker is gone. The server is killed with `kill -9` and its
VM adopted by the next one; every VM is stopped by PID at the end.
"""

from __future__ import annotations

import base64
import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tencentcloud.cvm.v20170312 import models

from stratus.compute import tinyimage
from tests.conftest import Account, Server, make_server, new_db_url, wait_for
from tests.e2e.helpers import wait_image

pytestmark = pytest.mark.skipif(bool(tinyimage.missing_tools()),
                                reason=f"the qemu driver needs {tinyimage.missing_tools()} (make test installs them)")

ZONE = "ap-guangzhou-1"
USER_DATA = b"#!/bin/sh\necho written-by-user-data > $ROOT/marker\n"


def req(cls: type, **params: Any) -> Any:
    r = cls()
    r._deserialize(params)
    return r


@pytest.fixture(scope="module")
def qemu_server(tmp_path_factory: pytest.TempPathFactory, db_url: str) -> Iterator[Server]:
    assert db_url  # on both databases
    tmp = tmp_path_factory.mktemp("qemu")
    srv = make_server(tmp, new_db_url(tmp), env_extra={"STRATUS_COMPUTE": "qemu"})
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
        for pidfile in (srv.data_dir / "regions").rglob("qemu.pid"):  # never leave a VM behind
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pidfile.read_text().strip()), 9)


def console(server: Server, account: Account, instance_id: str) -> str:
    out = server.common(account).call_json("GetInstanceConsoleOutput", {"InstanceId": instance_id})["Response"]
    return base64.b64decode(out["Output"]).decode("utf-8", "replace")


def wait_console(server: Server, account: Account, instance_id: str, text: str, timeout: float = 90) -> str:
    return wait_for(lambda: (c := console(server, account, instance_id)) and text in c and c,
                    timeout=timeout, interval=0.25, what=f"{text!r} on the console of {instance_id}")


def instance(server: Server, account: Account, instance_id: str) -> dict[str, Any]:
    resp = server.common(account).call_json("DescribeInstances", {"InstanceIds": [instance_id]})["Response"]
    return resp["InstanceSet"][0]


def wait_state(server: Server, account: Account, instance_id: str, state: str, timeout: float = 90) -> dict:
    return wait_for(lambda: (i := instance(server, account, instance_id))["InstanceState"] == state
                    and i["LatestOperationState"] != "OPERATING" and i, timeout=timeout, what=f"{instance_id} {state}")


def vm_pid(server: Server, instance_id: str) -> int:
    pidfile = server.data_dir / "regions" / "ap-guangzhou" / "host" / "instances" / instance_id / "qemu.pid"
    return int(pidfile.read_text().strip())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


def test_user_data_capture_relaunch_reset(qemu_server: Server, tmp_path: Path) -> None:
    srv = qemu_server
    acct = srv.account("vm-user")
    root = tinyimage.build_tiny_root_image(tmp_path)
    base_id = srv.run("image", "import", str(root), "--name", "tiny", "--format", "raw",
                      env=acct.env()).stdout.split()[-1]
    c = srv.client(acct)
    started = time.monotonic()
    [first] = c.RunInstances(req(models.RunInstancesRequest, ImageId=base_id, Placement={"Zone": ZONE},
                                 InstanceType="S5.SMALL1", SystemDisk={"DiskSize": 1},
                                 UserData=base64.b64encode(USER_DATA).decode())).InstanceIdSet
    log = wait_console(srv, acct, first, "STRATUS-USERDATA-DONE rc=0")
    marker_seconds = time.monotonic() - started
    assert "STRATUS-BOOT-OK" in log and "STRATUS-MARKER-PRESENT" not in log
    assert instance(srv, acct, first)["InstanceState"] == "RUNNING"
    wait_console(srv, acct, first, "STRATUS-READY")
    # Capture while it runs: paused over QMP, then resumed (the same VM process keeps running).
    pid = vm_pid(srv, first)
    image_id = c.CreateImage(req(models.CreateImageRequest, InstanceId=first, ImageName="with-marker")).ImageId
    image = wait_image(srv, acct, image_id, timeout=120)
    assert image["ImageState"] == "NORMAL", image["ImageStateReason"]
    assert image["SourceInstanceId"] == first and image["SourceImageId"] == base_id
    assert vm_pid(srv, first) == pid and alive(pid)
    # A new instance from the captured image finds the marker.
    [second] = c.RunInstances(req(models.RunInstancesRequest, ImageId=image_id, Placement={"Zone": ZONE},
                                  SystemDisk={"DiskSize": 1})).InstanceIdSet
    log = wait_console(srv, acct, second, "STRATUS-READY")
    assert "STRATUS-MARKER-PRESENT written-by-user-data" in log
    # Reset it to the original image: the marker is gone. (The console log keeps every boot.)
    boots = log.count("STRATUS-READY")
    c.ResetInstance(req(models.ResetInstanceRequest, InstanceId=second, ImageId=base_id))
    wait_state(srv, acct, second, "RUNNING")
    log = wait_for(lambda: (out := console(srv, acct, second)).count("STRATUS-READY") > boots and out,
                   timeout=90, what="the reinstalled instance to boot")
    last_boot = log[log.rindex("STRATUS-BOOT-OK"):]
    assert "STRATUS-MARKER-PRESENT" not in last_boot
    # The server dies hard; the next one adopts the running VMs, none is orphaned.
    pids = {iid: vm_pid(srv, iid) for iid in (first, second)}
    srv.kill9()
    assert all(alive(p) for p in pids.values())
    srv.start()
    for iid, p in pids.items():
        assert wait_state(srv, acct, iid, "RUNNING")["InstanceState"] == "RUNNING"
        assert vm_pid(srv, iid) == p and alive(p)
    c.StopInstances(req(models.StopInstancesRequest, InstanceIds=[first], StopType="HARD"))
    wait_state(srv, acct, first, "STOPPED")
    assert not alive(pids[first])
    c.TerminateInstances(req(models.TerminateInstancesRequest, InstanceIds=[first, second]))
    wait_for(lambda: not alive(pids[second]), timeout=60, what="the VM to be gone")
    print(f"\nqemu driver: RunInstances to user-data marker in {marker_seconds:.2f} s")
