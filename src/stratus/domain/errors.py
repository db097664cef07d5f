"""CVM error codes as exceptions: one class per code, the docstring is the message template.

Our exception hierarchy:

    CvmError                              every error the API can render (code + message)
      ├── AuthFailure*                    signature, key and timestamp problems
      ├── request shape                   InvalidAction, NoSuchVersion, MissingParameter,
      │                                   InvalidParameter*, InvalidParameterValue*, UnknownParameter,
      │                                   RequestSizeLimitExceeded, InvalidFilter*, InvalidRegion*, ...
      ├── image rules                     InvalidImageId.*, InvalidImageName.Duplicate,
      │                                   ImageQuotaLimitExceeded, UnsupportedOperation.*, ...
      └── InternalError                   anything unexpected (logged with the RequestId)

Render them in one place (`stratus.api.cvm.envelope`). Messages say what to do next.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar


class CvmError(Exception):
    """An error with a CVM error code: each subclass names its code and, as its docstring, the message
    template its keyword arguments fill in. A field left unfilled is a bug in the raiser: it raises
    KeyError (and the client gets InternalError), never a message with `{placeholders}` in it."""

    code: ClassVar[str] = "InternalError"

    def __init__(self, message: str | None = None, **data: Any) -> None:
        self.data = data
        if message is None:
            message = self.template().format(**data)
        self.message = message
        super().__init__(message)

    @classmethod
    def template(cls) -> str:
        """The docstring (a subclass without one inherits its parent's) as one line: a long one is wrapped in
        the source."""
        return " ".join((inspect.getdoc(cls) or cls.code).split())


# --- platform-wide (contract §2.7)


class InternalError(CvmError):
    """Internal error; the server log has details under this RequestId."""

    code = "InternalError"


class ServiceUnavailable(CvmError):
    """The catalog database is unreachable (restarting?); retry in a few seconds."""

    code = "ServiceUnavailable"


class AuthFailureInvalidAuthorization(CvmError):
    """The Authorization header is malformed: {detail}."""

    code = "AuthFailure.InvalidAuthorization"


class AuthFailureSecretIdNotFound(CvmError):
    """The SecretId is unknown or has been revoked; create a key with `stratus account key add`."""

    code = "AuthFailure.SecretIdNotFound"


class AuthFailureSignatureExpire(CvmError):
    """The request timestamp is more than 300 seconds away from server time; check the client clock."""

    code = "AuthFailure.SignatureExpire"


class AuthFailureSignatureFailure(CvmError):
    """The provided credentials could not be validated. Please check your signature is correct."""

    code = "AuthFailure.SignatureFailure"


class AuthFailureUnauthorizedOperation(CvmError):
    """This operation is not allowed for this account."""

    code = "AuthFailure.UnauthorizedOperation"


class InvalidAction(CvmError):
    """The action {action!r} does not exist in version 2017-03-12."""

    code = "InvalidAction"


class NoSuchVersion(CvmError):
    """The API version {version!r} is not supported; use 2017-03-12."""

    code = "NoSuchVersion"


class MissingParameter(CvmError):
    """The required parameter {name} is missing."""

    code = "MissingParameter"


class InvalidParameter(CvmError):
    """{detail}"""

    code = "InvalidParameter"


class InvalidParameterValue(CvmError):
    """{detail}"""

    code = "InvalidParameterValue"


class UnknownParameter(CvmError):
    """The parameter {name} is not known to action {action}."""

    code = "UnknownParameter"


class RequestSizeLimitExceeded(CvmError):
    """The request body exceeds {limit} bytes; upload image data through /uploads."""

    code = "RequestSizeLimitExceeded"


class UnsupportedProtocol(CvmError):
    """{detail}"""

    code = "UnsupportedProtocol"


class UnsupportedOperation(CvmError):
    """{detail}"""

    code = "UnsupportedOperation"


class InvalidRequest(CvmError):
    """{detail}"""

    code = "InvalidRequest"


class UnauthorizedOperation(CvmError):
    """{detail}"""

    code = "UnauthorizedOperation"


class LimitExceeded(CvmError):
    """{detail}"""

    code = "LimitExceeded"


class RequestLimitExceeded(CvmError):
    """Too many requests: {detail}."""

    code = "RequestLimitExceeded"


class ResourceNotFound(CvmError):
    """{detail}"""

    code = "ResourceNotFound"


class InvalidRegionNotFound(CvmError):
    """The region {region!r} does not exist; DescribeRegions lists the regions."""

    code = "InvalidRegion.NotFound"


class UnsupportedRegion(CvmError):
    """The region {region!r} is not served here."""

    code = "UnsupportedRegion"


class InvalidZoneMismatchRegion(CvmError):
    """The zone {zone!r} does not exist in region {region}."""

    code = "InvalidZone.MismatchRegion"


# --- filters and paging


class InvalidFilter(CvmError):
    """{detail}"""

    code = "InvalidFilter"


class InvalidFilterValueLimitExceeded(CvmError):
    """A filter may carry at most {limit} values; {name} has {count}."""

    code = "InvalidFilterValue.LimitExceeded"


class InvalidParameterCoexistImageIdsFilters(CvmError):
    """ImageIds and Filters cannot be specified at the same time; use one of them."""

    code = "InvalidParameter.InvalidParameterCoexistImageIdsFilters"


class InvalidParameterValueLimitExceeded(CvmError):
    """{detail}"""

    code = "InvalidParameterValue.LimitExceeded"


class InvalidParameterValueInvalidParameterValueLimit(CvmError):
    """{detail}"""

    code = "InvalidParameterValue.InvalidParameterValueLimit"


class InvalidParameterValueTooLarge(CvmError):
    """{detail}"""

    code = "InvalidParameterValue.TooLarge"


# --- images


class InvalidImageIdMalformed(CvmError):
    """{image_id!r} is not an image ID; image IDs look like img-xxxxxxxx."""

    code = "InvalidImageId.Malformed"


class InvalidImageIdNotFound(CvmError):
    """The image {image_id} does not exist."""

    code = "InvalidImageId.NotFound"


class InvalidImageIdIncorrectState(CvmError):
    """The image {image_id} is {state}; this operation needs {needed}."""

    code = "InvalidImageId.IncorrectState"


class InvalidImageIdInShared(CvmError):
    """The image {image_id} is shared with other accounts; cancel its sharing first: `stratus image shares
    {image_id}` lists them, `stratus image unshare {image_id} --account ACCOUNT_ID` cancels
    (ModifyImageSharePermission with Permission=CANCEL)."""

    code = "InvalidImageId.InShared"


class InvalidImageNameDuplicate(CvmError):
    """You already have an image named {name!r} in {region}; choose another name."""

    code = "InvalidImageName.Duplicate"


class ImageQuotaLimitExceeded(CvmError):
    """The custom image quota of {quota} images in {region} is used up; delete unused images first."""

    code = "ImageQuotaLimitExceeded"


class InvalidImageOsTypeUnsupported(CvmError):
    """The OS type {os_type!r} is not supported; see DescribeImportImageOs."""

    code = "InvalidImageOsType.Unsupported"


class InvalidImageOsVersionUnsupported(CvmError):
    """The OS version {os_version!r} is not supported for {os_type}; see DescribeImportImageOs."""

    code = "InvalidImageOsVersion.Unsupported"


class InvalidParameterUrlError(CvmError):
    """{detail}"""

    code = "InvalidParameter.InvalidParameterUrlError"


class ISOMustImportByForce(CvmError):
    """ISO files must be imported with Force=true."""

    code = "InvalidParameterValue.ISOMustImportByForce"


class InvalidBootMode(CvmError):
    """BootMode must be 'Legacy BIOS' or 'UEFI', not {value!r}."""

    code = "InvalidParameterValue.InvalidBootMode"


class InvalidLicenseType(CvmError):
    """LicenseType must be 'TencentCloud' or 'BYOL', not {value!r}."""

    code = "InvalidParameterValue.InvalidLicenseType"


class InvalidImageFamily(CvmError):
    """The image family {value!r} is malformed: use 1-60 letters, digits, '-', '_' or '.', starting with a letter."""

    code = "InvalidParameterValue.InvalidImageFamily"


class InvalidImageIdParam(CvmError):
    """{detail}"""

    code = "InvalidParameterValue.InvalidImageId"


class InvalidImageIdIsShared(CvmError):
    """The image {image_id} is shared with you; only its owner can do this."""

    code = "InvalidParameterValue.InvalidImageIdIsShared"


class InvalidImageState(CvmError):
    """The image {image_id} is {state}; wait until it is NORMAL."""

    code = "InvalidParameterValue.InvalidImageState"


class SharedImageModifyUnsupported(CvmError):
    """The image {image_id} is shared with you; its attributes can only be changed by its owner."""

    code = "UnsupportedOperation.SharedImageModifyUnsupported"


class SharedImageExportUnsupported(CvmError):
    """The image {image_id} is shared with you and cannot be exported; sync it into your own image first."""

    code = "UnsupportedOperation.SharedImageExportUnsupported"


class PublicImageExportUnsupported(CvmError):
    """Public image {image_id} cannot be exported."""

    code = "UnsupportedOperation.PublicImageExportUnsupported"


class BucketNotFound(CvmError):
    """The export bucket {bucket!r} is not configured in {region}; configured: {known}."""

    code = "InvalidParameterValue.BucketNotFound"


class InvalidFileNamePrefixList(CvmError):
    """FileNamePrefixList has {got} entries but ImageIds has {want}; give one prefix per image."""

    code = "InvalidParameterValue.InvalidFileNamePrefixList"


class ImageIdsSnapshotIdsMustOne(CvmError):
    """Give ImageIds (SnapshotIds are not supported here)."""

    code = "InvalidParameter.ImageIdsSnapshotIdsMustOne"


class ExportImageTaskLimitExceeded(CvmError):
    """{running} export tasks are running, the limit is {limit}; retry when one finishes."""

    code = "LimitExceeded.ExportImageTaskLimitExceeded"


class ImageTooLargeExportUnsupported(CvmError):
    """{detail}"""

    code = "UnsupportedOperation.ImageTooLargeExportUnsupported"


class MutexOperationTaskRunning(CvmError):
    """{detail}"""

    code = "MutexOperation.TaskRunning"


class IllegalTagKey(CvmError):
    """Tag key {key!r} is invalid: use 1-127 characters (values up to 255)."""

    code = "FailedOperation.IllegalTagKey"


class InvalidInstanceTypeMalformed(CvmError):
    """InstanceType {value!r} is malformed; instance types look like S5.MEDIUM2."""

    code = "InvalidInstanceType.Malformed"


class InstanceTypeNotFound(CvmError):
    """Instance type {value!r} does not exist; `stratus instance types` lists them."""

    code = "InvalidParameterValue.InstanceTypeNotFound"


class PermissionDenied(CvmError):
    """{detail}"""

    code = "UnauthorizedOperation.PermissionDenied"

# --- instances (contract §11)


class InvalidInstanceIdMalformed(CvmError):
    """{instance_id!r} is not an instance ID; instance IDs look like ins-xxxxxxxx."""

    code = "InvalidInstanceId.Malformed"


class InvalidInstanceIdNotFound(CvmError):
    """The instance {instance_id} does not exist."""

    code = "InvalidInstanceId.NotFound"


class InvalidZoneValue(CvmError):
    """The zone {zone!r} is not served here; DescribeZones lists the zones."""

    code = "InvalidParameterValue.ZoneNotSupported"


class InvalidParameterValueRange(CvmError):
    """{detail}"""

    code = "InvalidParameterValue.Range"


class InvalidParameterValueDuplicate(CvmError):
    """{detail}"""

    code = "InvalidParameterValue.Duplicate"


class InvalidClientTokenTooLong(CvmError):
    """ClientToken is {length} characters; use at most 64 ASCII characters."""

    code = "InvalidClientToken.TooLong"


class InvalidUserDataFormat(CvmError):
    """UserData must be base64 (at most 16 KiB decoded): {detail}"""

    code = "InvalidParameterValue.InvalidUserDataFormat"


class IllegalHostName(CvmError):
    """HostName {value!r} is invalid: {detail}"""

    code = "InvalidParameterValue.IllegalHostName"


class InvalidImageForGivenInstanceType(CvmError):
    """The image {image_id} is {arch}; instance type {instance_type} runs {type_arch} images."""

    code = "InvalidParameterValue.InvalidImageForGivenInstanceType"


class InvalidImageIdForResetInstance(CvmError):
    """{detail}"""

    code = "InvalidParameterValue.InvalidImageIdForRetsetInstance"


class InstanceQuotaExceeded(CvmError):
    """Launching {wanted} more instances would exceed the quota of {quota} in {region}; terminate some first."""

    code = "LimitExceeded.InstanceQuota"


class ResourceInsufficientSpecifiedInstanceType(CvmError):
    """Can't place {count} instance(s) of {instance_type}: {detail}; start a worker with `--host`, raise
    `--capacity-instances`, or launch fewer."""

    code = "ResourceInsufficient.SpecifiedInstanceType"


class InstanceOperationInProgress(CvmError):
    """The instance {instance_id} is busy with {operation}; try again when it finishes."""

    code = "OperationDenied.InstanceOperationInProgress"


class SpecifyOneParameter(CvmError):
    """{detail}"""

    code = "InvalidParameter.SpecifyOneParameter"


class SnapshotNotFound(CvmError):
    """{detail}"""

    code = "InvalidParameter.SnapshotNotFound"


class DataDiskNotBelongSpecifiedInstance(CvmError):
    """The disk {disk_id} is not a data disk of {instance_id}."""

    code = "InvalidParameter.DataDiskNotBelongSpecifiedInstance"


class DataDiskIdContainsRootDisk(CvmError):
    """{disk_id} is the system disk of {instance_id}; it is always included. List data disks only."""

    code = "InvalidParameter.DataDiskIdContainsRootDisk"


class InstanceStateError(CvmError):
    """The instance {instance_id} is {state}; {action} needs it {needed}."""

    code = "UnsupportedOperation.InstanceState"  # the family: each state has its own class and code below

    @staticmethod
    def of(instance_id: str, state: str, action: str, needed: str) -> InstanceStateError:
        """The error for an action refused because the instance is in `state` (InstanceStateRunning, ...)."""
        return _INSTANCE_STATE_ERRORS[state](instance_id=instance_id, state=state, action=action, needed=needed)


class InstanceStatePending(InstanceStateError):
    code = "UnsupportedOperation.InstanceStatePending"


class InstanceStateLaunchFailed(InstanceStateError):
    code = "UnsupportedOperation.InstanceStateLaunchFailed"


class InstanceStateRunning(InstanceStateError):
    code = "UnsupportedOperation.InstanceStateRunning"


class InstanceStateStopped(InstanceStateError):
    code = "UnsupportedOperation.InstanceStateStopped"


class InstanceStateStarting(InstanceStateError):
    code = "UnsupportedOperation.InstanceStateStarting"


class InstanceStateStopping(InstanceStateError):
    code = "UnsupportedOperation.InstanceStateStopping"


class InstanceStateRebooting(InstanceStateError):
    code = "UnsupportedOperation.InstanceStateRebooting"


class InstanceStateTerminating(InstanceStateError):
    code = "UnsupportedOperation.InstanceStateTerminating"


_INSTANCE_STATE_ERRORS: dict[str, type[InstanceStateError]] = {
    "PENDING": InstanceStatePending, "LAUNCH_FAILED": InstanceStateLaunchFailed, "RUNNING": InstanceStateRunning,
    "STOPPED": InstanceStateStopped, "STARTING": InstanceStateStarting, "STOPPING": InstanceStateStopping,
    "REBOOTING": InstanceStateRebooting, "TERMINATING": InstanceStateTerminating,
}




class InvalidTimeFormat(CvmError):
    """{name} must be a time like 2026-06-01 00:00:00."""

    code = "InvalidParameterValue.InvalidTimeFormat"


# --- region copies and sharing (contract §5.5–5.7, rules 4 and 5)


class SyncImageBusy(CvmError):
    """The image {image_id} is {state}; sync it when it is NORMAL."""

    code = "FailedOperation.InvalidImageState"


class InvalidImageIdTooLarge(CvmError):
    """The image {image_id} is {size} bytes; SyncImages copies images of at most {limit} bytes
    (limits.sync_max_image_bytes)."""

    code = "InvalidImageId.TooLarge"


class InvalidParameterValueInvalidRegion(CvmError):
    """{detail}"""

    code = "InvalidParameterValue.InvalidRegion"


class InvalidRegionUnavailable(CvmError):
    """The region {region} does not accept image copies (its sync_target setting is false); choose another."""

    code = "InvalidRegion.Unavailable"


class UnsupportedOperationRegion(CvmError):
    """{detail}"""

    code = "UnsupportedOperation.Region"


class SyncEncryptImageNotSupport(CvmError):
    """Encrypted images are not supported here; call SyncImages without Encrypt."""

    code = "UnsupportedOperation.SyncEncryptImageNotSupport"


class InvalidKmsKeyId(CvmError):
    """KmsKeyId is only valid with Encrypt=true, and encryption is not supported."""

    code = "InvalidParameter.InvalidKmsKeyId"


class ShareAccountAlreadyExists(CvmError):
    """The image {image_id} is already shared with account {account_id}."""

    code = "FailedOperation.AccountAlreadyExists"


class ShareAccountIsYourSelf(CvmError):
    """{account_id} is your own account; share the image with other accounts (you always see your own)."""

    code = "FailedOperation.AccountIsYourSelf"


class InvalidAccountIsYourSelf(CvmError):
    """{account_id} is your own account; an image is never shared with its owner."""

    code = "InvalidAccountIs.YourSelf"


class InvalidAccountIdNotFound(CvmError):
    """{detail}"""

    code = "InvalidAccountId.NotFound"


class BYOLImageShareFailed(CvmError):
    """The image {image_id} has LicenseType BYOL; bring-your-own-license images cannot be shared."""

    code = "FailedOperation.BYOLImageShareFailed"


class ShareOverQuota(CvmError):
    """The image {image_id} would be shared with {count} accounts; the limit is {limit}. Cancel some shares first
    (`stratus image unshare {image_id} --account ACCOUNT_ID`)."""

    code = "OverQuota"


class ImageNotBelongToAccount(CvmError):
    """The image {image_id} belongs to another account; only its owner can {what}."""

    code = "UnauthorizedOperation.ImageNotBelongToAccount"


class RequestTimeout(CvmError):
    """{detail}"""

    code = "RequestTimeout"

