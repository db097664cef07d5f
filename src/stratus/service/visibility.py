"""Who sees which image: visibility is the first rule of every image action.

An image exists for a caller only if it is public in the region, owned by the caller, or shared with the
caller. Anything else answers InvalidImageId.NotFound, never a permission error that would reveal that it
exists. The kind of an image (public, private, shared) for a caller decides what it may do with it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session, selectinload

from stratus.catalog.models import Image, ImageShare
from stratus.domain import errors, ids
from stratus.domain.states import ImageState, ImageType
from stratus.service.context import Caller


def _visible_anywhere(caller: Caller) -> Any:
    shared = select(ImageShare.image_id).where(ImageShare.account_id == caller.account_id)
    return or_(Image.is_public, Image.owner_id == caller.account_id, Image.id.in_(shared))


def visible_clause(caller: Caller, region: str) -> Any:
    """The images the caller sees in the region, as a WHERE clause."""
    return and_(Image.region == region, _visible_anywhere(caller))


def image_type(image: Image, caller: Caller) -> ImageType:
    if image.is_public:
        return ImageType.PUBLIC
    if image.owner_id == caller.account_id:
        return ImageType.PRIVATE
    return ImageType.SHARED


def check_image_id(image_id: Any) -> str:
    if not ids.is_id("image", image_id):
        raise errors.InvalidImageIdMalformed(image_id=image_id)
    return image_id


def get_visible(s: Session, caller: Caller, region: str, image_id: str, *, for_update: bool = False) -> Image:
    check_image_id(image_id)
    q = (
        select(Image)
        .where(Image.id == image_id, visible_clause(caller, region))
        .options(selectinload(Image.disks), selectinload(Image.tags))
    )
    if for_update:
        q = q.with_for_update()
    image = s.scalars(q).first()
    if image is None:
        raise not_found(s, caller, region, image_id)
    return image


def not_found(s: Session, caller: Caller, region: str, image_id: str) -> errors.CvmError:
    """InvalidImageId.NotFound; when the caller can see the id in another region, the message says where (an id
    is unique across regions, so this tells nothing the caller couldn't list)."""
    elsewhere = s.scalars(select(Image.region).where(
        Image.id == image_id, Image.region != region, _visible_anywhere(caller))).first()
    if elsewhere is None:
        return errors.InvalidImageIdNotFound(image_id=image_id)
    return errors.InvalidImageIdNotFound(
        f"The image {image_id} does not exist in {region}; it is in {elsewhere}: use that region "
        f"(`--region {elsewhere}`, X-TC-Region: {elsewhere}).", image_id=image_id)


def not_normal(image: Image) -> errors.CvmError:
    """InvalidParameterValue.InvalidImageState for an action that needs NORMAL: a failed image never gets there."""
    if image.state in (ImageState.IMPORTFAILED, ImageState.CREATEFAILED):
        return errors.InvalidImageState(
            f"The image {image.id} is {image.state} ({image.state_reason or 'no reason recorded'}) and will never "
            f"be NORMAL: delete it (`stratus image delete {image.id}`) and "
            f"{'import the file' if image.state == ImageState.IMPORTFAILED else 'capture the instance'} again.",
            image_id=image.id, state=image.state)
    return errors.InvalidImageState(image_id=image.id, state=image.state)


def owned_or_operator(image: Image, caller: Caller) -> bool:
    return image.owner_id == caller.account_id or (image.is_public and caller.is_operator)


def check_exportable(image: Image, caller: Caller) -> None:
    """The rule of ExportImages and of the chunked export: the owner's NORMAL images, and public ones for an
    operator; a shared image is for launching instances only."""
    kind = image_type(image, caller)
    if kind is ImageType.SHARED:
        raise errors.SharedImageExportUnsupported(image_id=image.id)
    if kind is ImageType.PUBLIC and not caller.is_operator:
        raise errors.PublicImageExportUnsupported(image_id=image.id)
    if image.state != ImageState.NORMAL:
        raise not_normal(image)
