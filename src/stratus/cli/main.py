"""The `stratus` command."""

from __future__ import annotations

from typing import Any

import typer
from typer import core as typer_core

from stratus.cli import account_cmd, demo_cmd, doctor_cmd, host_cmd, image, instance, serve_cmd, store_cmd
from stratus.cli.common import EXIT_CODES
from stratus.malloc import keep_freed_memory


def _tidy_help() -> None:
    """Help for people, not for Python: typer 0.29 tags every parameter with its type (`--json <bool>`,
    `<list[str]>`) and writes arguments as `{image_id}`. Options that take a value show a capitalised name
    (`--name NAME`), flags show nothing, and arguments read as in any Unix usage line (`IMAGE_ID...`)."""

    def option_type(self: Any, ctx: Any) -> str | None:
        if self.is_flag or self.count:
            return ""
        return self.metavar or (self.name or "value").upper()

    def argument_name(self: Any) -> str:
        return (self.metavar or self.name or "arg").upper()

    def argument_usage(self: Any) -> str:
        name = argument_name(self)
        name = name if self.required else f"[{name}]"
        return name + ("..." if self.nargs != 1 else "")

    # Patching typer's help rendering in place (no hook for it): mypy forbids assigning to methods.
    typer_core.TyperOption.display_type_rich = option_type  # type: ignore[method-assign]
    typer_core.TyperArgument.display_type_rich = lambda self, ctx: None  # type: ignore[method-assign]
    typer_core.TyperArgument._usage_display_name = argument_usage  # type: ignore[method-assign]
    typer_core.TyperArgument.display_name_raw = property(argument_name)  # type: ignore[assignment,method-assign]


_tidy_help()

app = typer.Typer(
    help="Stratus: a self-hostable cloud image service speaking the Tencent Cloud CVM API.\n\n"
    "Client verbs (image, instance) talk to a server; admin verbs (serve, account, demo, fsck, gc) act on the "
    "server's data directory: run them on the server machine from the directory the server runs in, or pass "
    "its --data-dir.\n\n" + EXIT_CODES,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("serve")(serve_cmd.serve)
app.command("worker")(serve_cmd.worker)
app.add_typer(account_cmd.app, name="account")
app.command("demo")(demo_cmd.demo)
app.add_typer(image.app, name="image")
app.add_typer(instance.app, name="instance")
app.add_typer(host_cmd.app, name="host")
app.command("fsck")(store_cmd.fsck)
app.command("gc")(store_cmd.gc)
app.command("doctor")(doctor_cmd.doctor)


def main() -> None:
    keep_freed_memory()
    app()


if __name__ == "__main__":
    main()
