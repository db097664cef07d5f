"""The actions on an existing image: ModifyImageAttribute, DeleteImages, and publishing a public image.

The other image actions live beside it: service/visibility.py (who sees which image), image_rules.py (names,
quota, state changes), image_describe.py, image_import.py, image_export.py and task_status.py.
"""

from __future__ import annotations

from sqlalchemy import func, select

from stratus.catalog.models import ExportObject, ImageShare, Task
from stratus.domain import errors
from stratus.domain.states import BUSY_STATES, ImageSource, ImageState, ImageType
from stratus.service.context import Caller, Services
from stratus.service.image_rules import (
    MAX_IDS,
    check_name_free,
    commit_or_duplicate,
    validate_description,
    validate_family,
    validate_name,
)
from stratus.service.visibility import get_visible, image_type, owned_or_operator

# --------------------------------------------------------------------------- ModifyImageAttribute


def modify_image_attribute(
    svc: Services,
    caller: Caller,
    region: str,
    image_id: str,
    *,
    name: str | None = None,
    description: str | None = None,
    family: str | None = None,
    deprecated: bool | None = None,
) -> None:
    """The owner (or an operator, for a public image) changes name, description, family or the
    deprecated flag. Not while the image is being created, imported or synced."""
    with svc.db.write() as s:
        image = get_visible(s, caller, region, image_id, for_update=svc.db.is_postgresql)
        if image_type(image, caller) is ImageType.SHARED:
            raise errors.SharedImageModifyUnsupported(image_id=image_id)
        if not owned_or_operator(image, caller):
            raise errors.InvalidImageIdParam(
                detail=f"The image {image_id} is a public image; only an operator can change it."
            )
        if image.state in BUSY_STATES:
            raise errors.InvalidImageIdIncorrectState(image_id=image_id, state=image.state,
                                                      needed="NORMAL or a failed state")
        if name is not None:
            validate_name(name)
            check_name_free(s, image.owner_id, region, name, except_id=image.id)
            image.name = name
        if description is not None:
            image.description = validate_description(description)
        if family is not None:
            image.family = validate_family(family)
        if deprecated is not None:
            image.deprecated = deprecated
        commit_or_duplicate(s, image.name, region)


# --------------------------------------------------------------------------- DeleteImages


def delete_images(svc: Services, caller: Caller, region: str, image_ids: list[str], *, dry_run: bool = False) -> None:
    """The owner deletes custom images (an operator may delete public ones). All or nothing: every
    image is checked before any is deleted. Instances made from an image keep working (their base
    stays until nothing needs it); the image's chunks are reclaimed by `stratus gc`."""
    if not image_ids:
        raise errors.MissingParameter(name="ImageIds")
    if len(image_ids) > MAX_IDS:
        raise errors.InvalidParameterValueLimitExceeded(detail=f"At most {MAX_IDS} ImageIds per request.")
    with svc.db.write() as s:
        images = []
        for image_id in dict.fromkeys(image_ids):
            image = get_visible(s, caller, region, image_id, for_update=svc.db.is_postgresql)
            kind = image_type(image, caller)
            if kind is ImageType.SHARED:
                raise errors.InvalidImageIdIsShared(image_id=image_id)
            if not owned_or_operator(image, caller):
                raise errors.InvalidImageIdParam(
                    detail=f"The image {image_id} is a public image; only an operator can delete it."
                )
            if image.state in BUSY_STATES:
                raise errors.InvalidImageIdIncorrectState(image_id=image_id, state=image.state,
                                                          needed="NORMAL or a failed state")
            if s.scalar(select(func.count()).select_from(ImageShare).where(ImageShare.image_id == image_id)):
                raise errors.InvalidImageIdInShared(image_id=image_id)
            in_flight = (Task.state.in_(("QUEUED", "RUNNING")))
            # An export of several images has no Task.image_id: its export objects name each image.
            if s.scalar(select(Task.id).where(in_flight, Task.image_id == image_id, Task.kind == "export")) or \
                    s.scalar(select(ExportObject.task_id).where(ExportObject.image_id == image_id,
                                                                ExportObject.state == "PENDING").limit(1)):
                raise errors.MutexOperationTaskRunning(
                    detail=f"The image {image_id} is being exported; delete it when the export finishes."
                )
            # A copy reads the source's chunks until it ends: deleting the source would let gc take them.
            if s.scalar(select(Task.id).where(in_flight, Task.kind == "sync", Task.source_image_id == image_id)):
                raise errors.MutexOperationTaskRunning(
                    detail=f"The image {image_id} is being copied to another region; delete it when the copy ends."
                )
            images.append(image)
        if dry_run:
            return
        for image in images:
            s.delete(image)
    from stratus.service.bases import release_unused_bases  # bases depend on images, not the other way

    release_unused_bases(svc, region)


# --------------------------------------------------------------------------- operator: publish


def publish_image(svc: Services, caller: Caller, region: str, image_id: str) -> None:
    """An operator publishes one of its own NORMAL images as a public image of the region."""
    if not caller.is_operator:
        raise errors.PermissionDenied(
            detail="Only an operator account can publish public images (`stratus account create --operator`)."
        )
    with svc.db.write() as s:
        image = get_visible(s, caller, region, image_id)
        if image.owner_id != caller.account_id:
            raise errors.InvalidImageIdParam(detail=f"The image {image_id} is not yours to publish.")
        if image.state != ImageState.NORMAL:
            raise errors.InvalidImageState(image_id=image_id, state=image.state)
        if s.scalar(select(func.count()).select_from(ImageShare).where(ImageShare.image_id == image_id)):
            raise errors.InvalidImageIdInShared(image_id=image_id)
        image.is_public = True
        image.source = ImageSource.OFFICIAL
