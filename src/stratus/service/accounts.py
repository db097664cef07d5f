"""Accounts and API keys: created by the operator on the server machine (`stratus account ...`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from stratus.catalog.models import Account, ApiKey
from stratus.domain import errors, ids
from stratus.service.context import Caller, Services


class AccountError(Exception):
    """An account administration error with a message for the operator."""


@dataclass(frozen=True)
class Credentials:
    account_id: str
    secret_id: str
    secret_key: str

    def as_json(self) -> dict[str, str]:
        return {"AccountId": self.account_id, "SecretId": self.secret_id, "SecretKey": self.secret_key}


def create_account(svc: Services, name: str, *, operator: bool = False) -> Credentials:
    account_id = ids.new_account_id()
    key = ApiKey(secret_id=ids.new_secret_id(), secret_key=ids.new_secret_key(), account_id=account_id)
    try:
        with svc.db.write() as s:
            s.add(Account(id=account_id, name=name, is_operator=operator))
            s.flush()
            s.add(key)
    except IntegrityError:
        raise AccountError(f"an account named {name!r} already exists; `stratus account list` shows it") from None
    return Credentials(account_id, key.secret_id, key.secret_key)


def _find(s, ref: str) -> Account:
    account = s.get(Account, ref) or s.scalar(select(Account).where(Account.name == ref))
    if account is None:
        raise AccountError(f"no account {ref!r}; `stratus account list` shows the accounts")
    return account


def list_accounts(svc: Services) -> list[dict[str, Any]]:
    with svc.db.read() as s:
        rows = s.scalars(select(Account).order_by(Account.created_at)).all()
        return [
            {
                "AccountId": a.id,
                "Name": a.name,
                "Operator": a.is_operator,
                "Keys": [k.secret_id for k in a.keys if k.revoked_at is None],
            }
            for a in rows
        ]


def add_key(svc: Services, account_ref: str) -> Credentials:
    with svc.db.write() as s:
        account = _find(s, account_ref)
        key = ApiKey(secret_id=ids.new_secret_id(), secret_key=ids.new_secret_key(), account_id=account.id)
        s.add(key)
        return Credentials(account.id, key.secret_id, key.secret_key)


def revoke_key(svc: Services, secret_id: str) -> None:
    with svc.db.write() as s:
        key = s.get(ApiKey, secret_id)
        if key is None or key.revoked_at is not None:
            raise AccountError(f"no active key {secret_id!r}")
        key.revoked_at = time.time()


# Every authenticated request runs this: plain SQL on a pooled connection (Database.fetch_one).
_KEY_SQL = ("SELECT k.secret_key, k.revoked_at, a.id, a.is_operator FROM api_keys k "
            "JOIN accounts a ON a.id = k.account_id WHERE k.secret_id = ?")


def lookup_key(svc: Services, secret_id: str) -> tuple[str, Caller]:
    """The secret key and the caller for a SecretId; AuthFailure.SecretIdNotFound if unknown or revoked.
    Read on every request, never cached: a revoked key is refused at once."""
    row = svc.db.fetch_one(_KEY_SQL, (secret_id,))
    if row is None or row[1] is not None:
        raise errors.AuthFailureSecretIdNotFound()
    return row[0], Caller(row[2], bool(row[3]))


def account_exists(svc: Services, account_id: str) -> bool:
    with svc.db.read() as s:
        return s.get(Account, account_id) is not None
