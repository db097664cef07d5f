"""Image sharing: an owner grants other accounts the use of a custom image in its region.

A share is a row (image, account, time). The receiver sees the image in that region as SHARED_IMAGE
(`visibility.visible_clause`), may launch and reinstall instances from it and sync it into its own custom image in
the same region; it can't modify, delete, export or re-share it (those rules live with each action). The
owner can't delete or publish an image while it is shared. Cancelling a share hides the image from the
receiver at once; instances already launched from it are not touched (they run from their own disks).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from stratus.catalog.models import Account, ImageShare
from stratus.domain import errors, ids
from stratus.domain.states import ImageState, ImageType
from stratus.service.context import Caller, Services
from stratus.service.visibility import check_image_id, get_visible, image_type, not_normal

# Contract §8: "each custom image can be shared with at most 500 accounts" (older docs: 50).
MAX_SHARES_PER_IMAGE = 500
SHARE = "SHARE"
CANCEL = "CANCEL"


@dataclass(frozen=True)
class Share:
    account_id: str
    created_at: float


def _check_accounts(caller: Caller, account_ids: list[str], permission: str) -> list[str]:
    if not account_ids:
        raise errors.MissingParameter(name="AccountIds")
    wanted = list(dict.fromkeys(account_ids))
    if len(wanted) > MAX_SHARES_PER_IMAGE:
        raise errors.InvalidParameterValueLimitExceeded(
            detail=f"At most {MAX_SHARES_PER_IMAGE} AccountIds per request, got {len(wanted)}."
        )
    for account_id in wanted:
        if not ids.is_account_id(account_id):
            raise errors.InvalidAccountIdNotFound(
                detail=f"{account_id!r} is not an account ID; account IDs are decimal numbers like 210989759100."
            )
        if account_id == caller.account_id:
            if permission == SHARE:
                raise errors.ShareAccountIsYourSelf(account_id=account_id)
            raise errors.InvalidAccountIsYourSelf(account_id=account_id)
    return wanted


def modify_image_share_permission(
    svc: Services, caller: Caller, region: str, image_id: str, account_ids: list[str], permission: str
) -> None:
    """ModifyImageSharePermission: the owner of a custom image shares it with (SHARE) or withdraws it
    from (CANCEL) other accounts, in the image's region. All or nothing.

    SHARE needs the image NORMAL; CANCEL works in any state, and cancelling an account the image is not
    shared with is a no-op (so `unshare` can be repeated).

    Codes: InvalidImageId.Malformed; InvalidImageId.NotFound (not visible to the caller, the answer for
    an id never issued); UnauthorizedOperation.ImageNotBelongToAccount (visible but someone else's: shared
    with the caller, or another account's public image); InvalidParameterValue.InvalidImageId (the owner's
    own public image: everyone sees it already); InvalidParameterValue.InvalidImageState (SHARE, not
    NORMAL); FailedOperation.BYOLImageShareFailed (SHARE, LicenseType BYOL); InvalidParameterValue
    (Permission not SHARE or CANCEL); MissingParameter (no AccountIds); InvalidParameterValue.LimitExceeded
    (over 500 AccountIds in one call); InvalidAccountId.NotFound (malformed or unknown account);
    FailedOperation.AccountIsYourSelf (SHARE with yourself) / InvalidAccountIs.YourSelf (CANCEL for
    yourself); FailedOperation.AccountAlreadyExists (SHARE twice); OverQuota (more than 500 accounts).
    """
    check_image_id(image_id)
    if permission not in (SHARE, CANCEL):
        raise errors.InvalidParameterValue(detail=f"Permission must be SHARE or CANCEL, not {permission!r}.")
    wanted = _check_accounts(caller, account_ids, permission)
    with svc.db.write() as s:
        # The image row is locked (PostgreSQL; SQLite writers are serialized) so a concurrent DeleteImages
        # or SHARE sees this change or waits for it.
        image = get_visible(s, caller, region, image_id, for_update=svc.db.is_postgresql)
        kind = image_type(image, caller)
        if image.owner_id != caller.account_id:
            what = "share it" if kind is ImageType.SHARED else "change who it is shared with"
            raise errors.ImageNotBelongToAccount(image_id=image_id, what=what)
        if image.is_public:
            raise errors.InvalidImageIdParam(
                detail=f"The image {image_id} is public: every account sees it already; share custom images."
            )
        current = set(s.scalars(select(ImageShare.account_id).where(ImageShare.image_id == image_id)).all())
        if permission == CANCEL:
            for account_id in wanted:
                if account_id in current:
                    s.delete(s.get(ImageShare, (image_id, account_id)))
            return
        if image.state != ImageState.NORMAL:
            raise not_normal(image)
        if image.license_type == "BYOL":
            raise errors.BYOLImageShareFailed(image_id=image_id)
        known = set(s.scalars(select(Account.id).where(Account.id.in_(wanted))).all())
        for account_id in wanted:
            if account_id not in known:
                raise errors.InvalidAccountIdNotFound(
                    detail=f"There is no account {account_id}; check the id with its owner "
                    "(`stratus account list` on the server)."
                )
            if account_id in current:
                raise errors.ShareAccountAlreadyExists(image_id=image_id, account_id=account_id)
        count = len(current) + len(wanted)
        if count > MAX_SHARES_PER_IMAGE:
            raise errors.ShareOverQuota(image_id=image_id, count=count, limit=MAX_SHARES_PER_IMAGE)
        for account_id in wanted:
            s.add(ImageShare(image_id=image_id, account_id=account_id))
        try:
            s.flush()
        except IntegrityError:  # a concurrent SHARE of the same account won the race
            raise errors.ShareAccountAlreadyExists(image_id=image_id, account_id=", ".join(wanted)) from None


def describe_image_share_permission(svc: Services, caller: Caller, region: str, image_id: str) -> list[Share]:
    """DescribeImageSharePermission: the accounts the image is shared with, oldest first. Its owner only
    (a receiver must not learn who else received it).

    Codes: InvalidImageId.Malformed; InvalidImageId.NotFound (not visible to the caller);
    UnauthorizedOperation.ImageNotBelongToAccount (visible but someone else's)."""
    check_image_id(image_id)
    with svc.db.read() as s:
        image = get_visible(s, caller, region, image_id)
        if image.owner_id != caller.account_id:
            raise errors.ImageNotBelongToAccount(image_id=image_id, what="see whom it is shared with")
        rows = s.execute(
            select(ImageShare.account_id, ImageShare.created_at)
            .where(ImageShare.image_id == image_id)
            .order_by(ImageShare.created_at, ImageShare.account_id)
        ).all()
    return [Share(a, t) for a, t in rows]

