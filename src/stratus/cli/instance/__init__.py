"""`stratus instance ...`: instance verbs through the official SDK, one verb (or one small family of verbs) per
module, registered here on one typer app in the order `--help` lists them."""

from __future__ import annotations

import typer

from stratus.cli.instance import console, lifecycle, list_show, run

app = typer.Typer(help="Run, list, stop, start, reboot, reset and terminate instances.", no_args_is_help=True)
app.command("run")(run.run)
app.command("list")(list_show.list_)
app.command("show")(list_show.show)
app.command("start")(lifecycle.start)
app.command("stop")(lifecycle.stop)
app.command("reboot")(lifecycle.reboot)
app.command("terminate")(lifecycle.terminate)
app.command("reset")(lifecycle.reset)
app.command("console")(console.console_)
