"""`stratus account ...`: create accounts and manage their API keys (on the server machine)."""

from __future__ import annotations

import sys

import typer

from stratus.cli.common import (
    ConfigOpt,
    DataDirOpt,
    InitOpt,
    JsonOpt,
    admin_services,
    console,
    die,
    print_json,
    table,
)

app = typer.Typer(help="Accounts and API keys (run on the server machine, against the catalog of its data "
                  "directory).", no_args_is_help=True)


def print_exports(secret_id: str, secret_key: str) -> None:
    # Only the export lines go to stdout, so `eval "$(stratus account create NAME)"` sets them.
    sys.stdout.write(f"export TENCENTCLOUD_SECRET_ID={secret_id}\nexport TENCENTCLOUD_SECRET_KEY={secret_key}\n")


@app.command("create")
def create(
    name: str,
    operator: bool = typer.Option(False, "--operator", help="May publish public images."),
    data_dir: str = DataDirOpt,
    config: str = ConfigOpt,
    init: bool = InitOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Create an account with one API key; prints the shell lines that set it (for `eval "$(...)"`)."""
    from stratus.service.accounts import AccountError, create_account

    try:
        creds = create_account(admin_services(data_dir, config, init=init), name, operator=operator)
    except AccountError as exc:
        die(str(exc), 1)
    console.print(f"account {creds.account_id} ({name}{', operator' if operator else ''})", highlight=False)
    if json_out:
        print_json(creds.as_json())
    else:
        print_exports(creds.secret_id, creds.secret_key)


@app.command("list")
def list_(data_dir: str = DataDirOpt, config: str = ConfigOpt, json_out: bool = JsonOpt) -> None:
    """List accounts and their active keys."""
    from stratus.service.accounts import list_accounts

    rows = list_accounts(admin_services(data_dir, config))
    if json_out:
        print_json(rows)
        return
    table(["AccountId", "Name", "Operator", "Keys"],
          [[r["AccountId"], r["Name"], "yes" if r["Operator"] else "", ",".join(r["Keys"])] for r in rows])


key_app = typer.Typer(help="Add and revoke API keys.", no_args_is_help=True)
app.add_typer(key_app, name="key")


@key_app.command("add")
def key_add(account: str = typer.Argument(..., help="Account id or name."), data_dir: str = DataDirOpt,
            config: str = ConfigOpt, json_out: bool = JsonOpt) -> None:
    """Add an API key to an account."""
    from stratus.service.accounts import AccountError, add_key

    try:
        creds = add_key(admin_services(data_dir, config), account)
    except AccountError as exc:
        die(str(exc), 1)
    if json_out:
        print_json(creds.as_json())
    else:
        print_exports(creds.secret_id, creds.secret_key)


@key_app.command("revoke")
def key_revoke(secret_id: str, data_dir: str = DataDirOpt, config: str = ConfigOpt) -> None:
    """Revoke an API key at once: requests signed with it get AuthFailure.SecretIdNotFound."""
    from stratus.service.accounts import AccountError, revoke_key

    try:
        revoke_key(admin_services(data_dir, config), secret_id)
    except AccountError as exc:
        die(str(exc), 1)
    sys.stdout.write(f"revoked {secret_id}\n")
