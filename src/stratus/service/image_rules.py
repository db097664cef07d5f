"""The rules every action that creates or changes an image shares: names, descriptions, families and
tags, the per-region image quota, and moving an image along the state machine."""

from __future__ import annotations

import re
import time
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from stratus.catalog.models import Image
from stratus.domain import errors, tags
from stratus.domain.states import ImageState, check_image
from stratus.service.context import Services
from stratus.service.limits import lock_account

MAX_IDS = 100  # ImageIds per request
NAME_MAX = 60
DESCRIPTION_MAX = 256
FAMILY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,59}$")


class DryRunPassed(Exception):
    """Raised inside a transaction to roll it back after every check of a DryRun passed."""


def count_images(s: Session, owner_id: str, region: str) -> int:
    return s.scalar(select(func.count()).select_from(Image).where(Image.owner_id == owner_id,
                                                                    Image.region == region)) or 0


def reserve_quota(svc: Services, s: Session, owner_id: str, region: str, wanted: int = 1) -> None:
    """Serialize reservations per account (row lock on PostgreSQL, BEGIN IMMEDIATE on SQLite), so two
    concurrent imports can't both take the last slot: the new image row itself is the reservation."""
    lock_account(svc, s, owner_id)
    quota = svc.settings.quotas.images_per_region
    if count_images(s, owner_id, region) + wanted > quota:
        raise errors.ImageQuotaLimitExceeded(quota=quota, region=region)


def check_name_free(s: Session, owner_id: str, region: str, name: str, *, except_id: str | None = None) -> None:
    q = select(Image.id).where(Image.owner_id == owner_id, Image.region == region, Image.name == name)
    if except_id:
        q = q.where(Image.id != except_id)
    if s.scalar(q) is not None:
        raise errors.InvalidImageNameDuplicate(name=name, region=region)


def validate_name(name: str) -> str:
    if not name or not name.strip():
        raise errors.InvalidParameterValue(detail="ImageName must not be empty.")
    if len(name) > NAME_MAX:
        raise errors.InvalidParameterValueTooLarge(
            detail=f"ImageName is {len(name)} characters; the limit is {NAME_MAX}."
        )
    return name


def validate_description(text: str | None) -> str:
    text = text or ""
    if len(text) > DESCRIPTION_MAX:
        raise errors.InvalidParameterValueTooLarge(
            detail=f"ImageDescription is {len(text)} characters; the limit is {DESCRIPTION_MAX}."
        )
    return text


def validate_family(family: str | None) -> str:
    if family is None or family == "":
        return ""
    if not FAMILY_RE.match(family):
        raise errors.InvalidImageFamily(value=family)
    return family


def validate_tags(tag_specs: list[dict[str, Any]] | None) -> list[tuple[str, str]]:
    """The tags of a new image: TagSpecification entries must be for ResourceType 'image'."""
    return tags.from_specs(tag_specs, ("image",), noun="image", refuse_others=True)


def commit_or_duplicate(s: Session, name: str, region: str) -> None:
    try:
        s.flush()
    except IntegrityError:
        # Two requests raced past check_name_free; the unique key decides.
        raise errors.InvalidImageNameDuplicate(name=name, region=region) from None


def set_image_state(s: Session, image_id: str | None, state: ImageState, *, reason: str | None = None,
                    progress: float | None = None) -> None:
    """Move an image along the state machine (IllegalTransition if it can't go there). An image deleted
    meanwhile has no state to change."""
    assert image_id is not None, "an image task without an image"
    old = s.scalar(select(Image.state).where(Image.id == image_id))
    if old is None:
        return
    check_image(old, state)
    values: dict[str, Any] = {"state": state, "state_reason": reason, "updated_at": time.time()}
    if progress is not None:
        values["progress"] = progress
    s.execute(update(Image).where(Image.id == image_id).values(**values))
