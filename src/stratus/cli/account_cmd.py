"""`stratus account ...`: create accounts and manage their API keys (on the server machine)."""

from __future__ import annotations

import typer

from stratus.cli.common import ConfigOpt, DataDirOpt, JsonOpt, die, out, print_json, settings

app = typer.Typer(help="Accounts and API keys (run on the server machine, against its catalog).",
                  no_args_is_help=True)


def _svc(data_dir: str | None, config: str | None):  # type: ignore[no-untyped-def]
    from stratus.service.runtime import prepare

    return prepare(settings(data_dir, config))


@app.command("create")
def create(
    name: str,
    operator: bool = typer.Option(False, "--operator", help="May publish public images."),
    data_dir: str = DataDirOpt,
    config: str = ConfigOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Create an account with one API key."""
    from stratus.service.accounts import AccountError, create_account

    try:
        creds = create_account(_svc(data_dir, config), name, operator=operator)
    except AccountError as exc:
        die(str(exc), 1)
    if json_out:
        print_json(creds.as_json())
    else:
        out.print(f"account {creds.account_id} ({name}{', operator' if operator else ''})")
        out.print(f"export TENCENTCLOUD_SECRET_ID={creds.secret_id}")
        out.print(f"export TENCENTCLOUD_SECRET_KEY={creds.secret_key}")


@app.command("list")
def list_(data_dir: str = DataDirOpt, config: str = ConfigOpt, json_out: bool = JsonOpt) -> None:
    """List accounts and their active keys."""
    from rich.table import Table

    from stratus.service.accounts import list_accounts

    rows = list_accounts(_svc(data_dir, config))
    if json_out:
        print_json(rows)
        return
    table = Table("AccountId", "Name", "Operator", "Keys")
    for r in rows:
        table.add_row(str(r["AccountId"]), str(r["Name"]), "yes" if r["Operator"] else "", ", ".join(r["Keys"]))  # type: ignore[arg-type]
    out.print(table)


key_app = typer.Typer(help="Add and revoke API keys.", no_args_is_help=True)
app.add_typer(key_app, name="key")


@key_app.command("add")
def key_add(account: str = typer.Argument(..., help="Account id or name."), data_dir: str = DataDirOpt,
            config: str = ConfigOpt, json_out: bool = JsonOpt) -> None:
    """Add an API key to an account."""
    from stratus.service.accounts import AccountError, add_key

    try:
        creds = add_key(_svc(data_dir, config), account)
    except AccountError as exc:
        die(str(exc), 1)
    if json_out:
        print_json(creds.as_json())
    else:
        out.print(f"export TENCENTCLOUD_SECRET_ID={creds.secret_id}")
        out.print(f"export TENCENTCLOUD_SECRET_KEY={creds.secret_key}")


@key_app.command("revoke")
def key_revoke(secret_id: str, data_dir: str = DataDirOpt, config: str = ConfigOpt) -> None:
    """Revoke an API key at once: requests signed with it get AuthFailure.SecretIdNotFound."""
    from stratus.service.accounts import AccountError, revoke_key

    try:
        revoke_key(_svc(data_dir, config), secret_id)
    except AccountError as exc:
        die(str(exc), 1)
    out.print(f"revoked {secret_id}")
