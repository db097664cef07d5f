"""`stratus image ...`: client verbs that talk to a server through the official SDK, one verb (or one small
family of verbs) per module, registered here on one typer app in the order `--help` lists them.

Credentials come from TENCENTCLOUD_SECRET_ID / TENCENTCLOUD_SECRET_KEY, the server from
--endpoint or STRATUS_ENDPOINT. Image bytes go through the data API (`/uploads`, `/buckets`): chunked
(cli/chunked.py) or as a whole file (cli/wholefile.py).
"""

from __future__ import annotations

import typer

from stratus.cli.image import copy, create, delete, export, import_, list_show, publish, share, upload

app = typer.Typer(help="Import, list, show, export, delete, copy, share and publish images.", no_args_is_help=True)
app.command("upload")(upload.upload)
app.command("import")(import_.import_)
app.command("list")(list_show.list_)
app.command("show")(list_show.show)
app.command("delete")(delete.delete)
app.command("publish")(publish.publish)
app.command("copy")(copy.copy)
app.command("share")(share.share)
app.command("unshare")(share.unshare)
app.command("shares")(share.shares)
app.command("export")(export.export)
app.command("create")(create.create)
