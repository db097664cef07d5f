"""`stratus demo`: a bootable public image out of the box, for the quickstart and for trying the qemu driver.

It builds the tiny Linux image of :mod:`stratus.compute.tinyimage` on this machine (the Debian cloud kernel and
busybox that `make deps` installs) and imports it, through the running server, as the public image
``stratus-tiny-linux`` of every region: the operator path (ImportImage, PublishImage, SyncImages), done as the
operator account ``stratus-demo`` with a key made for the run and revoked after it. Running it again reuses
what is there.
"""

from __future__ import annotations

from stratus.cli.common import (
    EXIT_FAILED,
    ConfigOpt,
    DataDirOpt,
    Endpoint,
    EndpointOpt,
    JsonOpt,
    admin_services,
    console,
    die,
    print_json,
    sdk_errors,
    table,
)

DEMO_IMAGE = "stratus-tiny-linux"
DEMO_ACCOUNT = "stratus-demo"


def _operator_key(svc) -> tuple[str, str]:
    from stratus.service.accounts import AccountError, add_key, create_account, list_accounts

    existing = next((a for a in list_accounts(svc) if a["Name"] == DEMO_ACCOUNT), None)
    if existing is None:
        creds = create_account(svc, DEMO_ACCOUNT, operator=True)
    elif not existing["Operator"]:
        raise AccountError(f"the account {DEMO_ACCOUNT!r} exists but is not an operator; rename it or make it one")
    else:
        creds = add_key(svc, DEMO_ACCOUNT)
    return creds.secret_id, creds.secret_key


def _public_demo_images(ep: Endpoint, regions: list[str]) -> dict[str, str]:
    found = {}
    for region in regions:
        resp = ep.in_region(region).call("DescribeImages", {"Filters": [
            {"Name": "image-type", "Values": ["PUBLIC_IMAGE"]}, {"Name": "image-name", "Values": [DEMO_IMAGE]}]})
        exact = [i for i in resp["ImageSet"] if i["ImageName"] == DEMO_IMAGE and i["ImageState"] == "NORMAL"]
        if exact:
            found[region] = exact[0]["ImageId"]
    return found


@sdk_errors
def demo(
    endpoint: str = EndpointOpt,
    data_dir: str = DataDirOpt,
    config: str = ConfigOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Build a tiny bootable Linux image here and publish it as `stratus-tiny-linux` in every region (on the
    server machine, with the server running). Prints each region and its image id."""
    from stratus.cli.image.follow import follow_image
    from stratus.cli.image.publish import publish_image
    from stratus.cli.wholefile import upload_file
    from stratus.compute import tinyimage
    from stratus.service.accounts import AccountError, revoke_key

    missing = tinyimage.missing_tools()
    if missing:
        die(f"building the demo image needs {', '.join(missing)}: `make deps` installs them", EXIT_FAILED)
    svc = admin_services(data_dir, config)
    try:
        secret_id, secret_key = _operator_key(svc)
    except AccountError as exc:
        die(str(exc), 1)
    try:
        ep = Endpoint(endpoint, None, secret_id=secret_id, secret_key=secret_key)
        regions = [r["Region"] for r in ep.call("DescribeRegions", {})["RegionSet"]]
        published = _public_demo_images(ep, regions)
        missing = [r for r in regions if r not in published]
        raw = None
        while missing:
            rep = ep.in_region(missing[0])
            if raw is None:
                console.print(f"building the tiny image from {tinyimage.cloud_kernel()} and busybox", highlight=False)
                raw = tinyimage.build_tiny_root_image(svc.settings.data_dir / "demo")
            upload_id = upload_file(rep, raw, "RAW")
            image_id = rep.request("ImportImage", {
                "ImageUrl": f"upload://{upload_id}", "ImageName": DEMO_IMAGE, "OsType": "Other Linux",
                "OsVersion": "-", "Architecture": "x86_64",
                "ImageDescription": "Debian cloud kernel + busybox; runs #! user data (stratus demo)"}).ImageId
            image = follow_image(rep, image_id, "IMPORTING")
            if image["ImageState"] != "NORMAL":
                die(f"import of {image_id} failed: {image.get('ImageStateReason')}", EXIT_FAILED)
            # Copies go everywhere only when no region has one yet; otherwise each missing region imports its own.
            done = publish_image(rep, image_id, all_regions=len(missing) == len(regions))
            failed = [f"{p['Region']}: {p.get('ImageStateReason')}" for p in done if p["ImageState"] != "NORMAL"]
            if failed:
                die(f"copies failed: {'; '.join(failed)}", EXIT_FAILED)
            published.update({p["Region"]: p["ImageId"] for p in done})
            missing = [r for r in regions if r not in published]
    finally:
        revoke_key(svc, secret_id)
    rows = [{"Region": r, "ImageId": published[r], "ImageName": DEMO_IMAGE} for r in regions if r in published]
    if json_out:
        print_json(rows)
    else:
        table(["Region", "ImageId", "ImageName"], [[r["Region"], r["ImageId"], r["ImageName"]] for r in rows])
