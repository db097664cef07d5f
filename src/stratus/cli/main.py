"""The `stratus` command."""

from __future__ import annotations

import typer

from stratus.cli import account_cmd, doctor_cmd, image_cmd, instance_cmd, serve_cmd, store_cmd
from stratus.cli.common import __doc__ as EXIT_CODES

app = typer.Typer(
    help="Stratus: a self-hostable cloud image service speaking the Tencent Cloud CVM API.\n\n" + (EXIT_CODES or ""),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("serve")(serve_cmd.serve)
app.command("worker")(serve_cmd.worker)
app.add_typer(account_cmd.app, name="account")
image_cmd.app.command("create")(instance_cmd.create_image)
app.add_typer(image_cmd.app, name="image")
app.add_typer(instance_cmd.app, name="instance")
app.command("fsck")(store_cmd.fsck)
app.command("gc")(store_cmd.gc)
app.command("doctor")(doctor_cmd.doctor)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
