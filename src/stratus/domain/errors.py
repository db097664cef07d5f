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

from typing import Any, ClassVar


class CvmError(Exception):
    """An error with a CVM error code."""

    code: ClassVar[str] = "InternalError"

    def __init__(self, message: str | None = None, **data: Any) -> None:
        self.data = data
        if message is None:
            template = (self.__doc__ or self.code).strip()
            try:
                message = template.format(**data)
            except (KeyError, IndexError):
                message = template
        self.message = message
        super().__init__(message)


def _error(code: str, doc: str) -> type[CvmError]:
    name = code.replace(".", "_")
    return type(name, (CvmError,), {"code": code, "__doc__": doc})


# --- platform-wide (contract §2.7)
InternalError = _error("InternalError", "Internal error; the server log has details under this RequestId.")
AuthFailureInvalidAuthorization = _error(
    "AuthFailure.InvalidAuthorization", "The Authorization header is malformed: {detail}."
)
AuthFailureSecretIdNotFound = _error(
    "AuthFailure.SecretIdNotFound",
    "The SecretId is unknown or has been revoked; create a key with `stratus account key add`.",
)
AuthFailureSignatureExpire = _error(
    "AuthFailure.SignatureExpire",
    "The request timestamp is more than 300 seconds away from server time; check the client clock.",
)
AuthFailureSignatureFailure = _error(
    "AuthFailure.SignatureFailure",
    "The provided credentials could not be validated. Please check your signature is correct.",
)
AuthFailureUnauthorizedOperation = _error(
    "AuthFailure.UnauthorizedOperation", "This operation is not allowed for this account."
)
InvalidAction = _error("InvalidAction", "The action {action!r} does not exist in version 2017-03-12.")
NoSuchVersion = _error("NoSuchVersion", "The API version {version!r} is not supported; use 2017-03-12.")
MissingParameter = _error("MissingParameter", "The required parameter {name} is missing.")
InvalidParameter = _error("InvalidParameter", "{detail}")
InvalidParameterValue = _error("InvalidParameterValue", "{detail}")
UnknownParameter = _error("UnknownParameter", "The parameter {name} is not known to action {action}.")
RequestSizeLimitExceeded = _error(
    "RequestSizeLimitExceeded", "The request body exceeds {limit} bytes; upload image data through /uploads."
)
UnsupportedProtocol = _error("UnsupportedProtocol", "{detail}")
UnsupportedOperation = _error("UnsupportedOperation", "{detail}")
InvalidRequest = _error("InvalidRequest", "{detail}")
UnauthorizedOperation = _error("UnauthorizedOperation", "{detail}")
LimitExceeded = _error("LimitExceeded", "{detail}")
RequestLimitExceeded = _error("RequestLimitExceeded", "Too many requests: {detail}.")
ResourceNotFound = _error("ResourceNotFound", "{detail}")
InvalidRegionNotFound = _error(
    "InvalidRegion.NotFound", "The region {region!r} does not exist; DescribeRegions lists the regions."
)
UnsupportedRegion = _error("UnsupportedRegion", "The region {region!r} is not served here.")
InvalidZoneMismatchRegion = _error(
    "InvalidZone.MismatchRegion", "The zone {zone!r} does not exist in region {region}."
)

# --- filters and paging
InvalidFilter = _error("InvalidFilter", "{detail}")
InvalidFilterValueLimitExceeded = _error(
    "InvalidFilterValue.LimitExceeded", "A filter may carry at most {limit} values; {name} has {count}."
)
InvalidParameterCoexistImageIdsFilters = _error(
    "InvalidParameter.InvalidParameterCoexistImageIdsFilters",
    "ImageIds and Filters cannot be specified at the same time; use one of them.",
)
InvalidParameterValueLimitExceeded = _error("InvalidParameterValue.LimitExceeded", "{detail}")
InvalidParameterValueInvalidParameterValueLimit = _error(
    "InvalidParameterValue.InvalidParameterValueLimit", "{detail}"
)
InvalidParameterValueTooLarge = _error("InvalidParameterValue.TooLarge", "{detail}")

# --- images
InvalidImageIdMalformed = _error(
    "InvalidImageId.Malformed", "{image_id!r} is not an image ID; image IDs look like img-xxxxxxxx."
)
InvalidImageIdNotFound = _error("InvalidImageId.NotFound", "The image {image_id} does not exist.")
InvalidImageIdIncorrectState = _error(
    "InvalidImageId.IncorrectState", "The image {image_id} is {state}; this operation needs {needed}."
)
InvalidImageIdInShared = _error(
    "InvalidImageId.InShared",
    "The image {image_id} is shared with other accounts; cancel its sharing first: `stratus image shares "
    "{image_id}` lists them, `stratus image unshare {image_id} --account ACCOUNT_ID` cancels "
    "(ModifyImageSharePermission with Permission=CANCEL).",
)
InvalidImageNameDuplicate = _error(
    "InvalidImageName.Duplicate", "You already have an image named {name!r} in {region}; choose another name."
)
ImageQuotaLimitExceeded = _error(
    "ImageQuotaLimitExceeded",
    "The custom image quota of {quota} images in {region} is used up; delete unused images first.",
)
InvalidImageOsTypeUnsupported = _error(
    "InvalidImageOsType.Unsupported", "The OS type {os_type!r} is not supported; see DescribeImportImageOs."
)
InvalidImageOsVersionUnsupported = _error(
    "InvalidImageOsVersion.Unsupported",
    "The OS version {os_version!r} is not supported for {os_type}; see DescribeImportImageOs.",
)
InvalidParameterUrlError = _error("InvalidParameter.InvalidParameterUrlError", "{detail}")
ISOMustImportByForce = _error(
    "InvalidParameterValue.ISOMustImportByForce", "ISO files must be imported with Force=true."
)
InvalidBootMode = _error(
    "InvalidParameterValue.InvalidBootMode", "BootMode must be 'Legacy BIOS' or 'UEFI', not {value!r}."
)
InvalidLicenseType = _error(
    "InvalidParameterValue.InvalidLicenseType", "LicenseType must be 'TencentCloud' or 'BYOL', not {value!r}."
)
InvalidImageFamily = _error(
    "InvalidParameterValue.InvalidImageFamily",
    "The image family {value!r} is malformed: use 1-60 letters, digits, '-', '_' or '.', starting with a letter.",
)
InvalidImageIdParam = _error("InvalidParameterValue.InvalidImageId", "{detail}")
InvalidImageIdIsShared = _error(
    "InvalidParameterValue.InvalidImageIdIsShared",
    "The image {image_id} is shared with you; only its owner can do this.",
)
InvalidImageState = _error(
    "InvalidParameterValue.InvalidImageState", "The image {image_id} is {state}; wait until it is NORMAL."
)
SharedImageModifyUnsupported = _error(
    "UnsupportedOperation.SharedImageModifyUnsupported",
    "The image {image_id} is shared with you; its attributes can only be changed by its owner.",
)
SharedImageExportUnsupported = _error(
    "UnsupportedOperation.SharedImageExportUnsupported",
    "The image {image_id} is shared with you and cannot be exported; sync it into your own image first.",
)
PublicImageExportUnsupported = _error(
    "UnsupportedOperation.PublicImageExportUnsupported", "Public image {image_id} cannot be exported."
)
BucketNotFound = _error(
    "InvalidParameterValue.BucketNotFound",
    "The export bucket {bucket!r} is not configured in {region}; configured: {known}.",
)
InvalidFileNamePrefixList = _error(
    "InvalidParameterValue.InvalidFileNamePrefixList",
    "FileNamePrefixList has {got} entries but ImageIds has {want}; give one prefix per image.",
)
ImageIdsSnapshotIdsMustOne = _error(
    "InvalidParameter.ImageIdsSnapshotIdsMustOne", "Give ImageIds (SnapshotIds are not supported here)."
)
ExportImageTaskLimitExceeded = _error(
    "LimitExceeded.ExportImageTaskLimitExceeded",
    "{running} export tasks are running, the limit is {limit}; retry when one finishes.",
)
ImageTooLargeExportUnsupported = _error(
    "UnsupportedOperation.ImageTooLargeExportUnsupported", "{detail}"
)
MutexOperationTaskRunning = _error("MutexOperation.TaskRunning", "{detail}")
IllegalTagKey = _error(
    "FailedOperation.IllegalTagKey", "Tag key {key!r} is invalid: use 1-127 characters (values up to 255)."
)
InvalidInstanceTypeMalformed = _error(
    "InvalidInstanceType.Malformed", "InstanceType {value!r} is malformed; instance types look like S5.MEDIUM2."
)
InstanceTypeNotFound = _error(
    "InvalidParameterValue.InstanceTypeNotFound",
    "Instance type {value!r} does not exist; `stratus instance types` lists them.",
)
PermissionDenied = _error("UnauthorizedOperation.PermissionDenied", "{detail}")
# --- instances (contract §11)
InvalidInstanceIdMalformed = _error(
    "InvalidInstanceId.Malformed", "{instance_id!r} is not an instance ID; instance IDs look like ins-xxxxxxxx."
)
InvalidInstanceIdNotFound = _error("InvalidInstanceId.NotFound", "The instance {instance_id} does not exist.")
InvalidZoneValue = _error(
    "InvalidParameterValue.ZoneNotSupported", "The zone {zone!r} is not served here; DescribeZones lists the zones."
)
InvalidParameterValueRange = _error("InvalidParameterValue.Range", "{detail}")
InvalidParameterValueDuplicate = _error("InvalidParameterValue.Duplicate", "{detail}")
InvalidClientTokenTooLong = _error(
    "InvalidClientToken.TooLong", "ClientToken is {length} characters; use at most 64 ASCII characters."
)
InvalidUserDataFormat = _error(
    "InvalidParameterValue.InvalidUserDataFormat", "UserData must be base64 (at most 16 KiB decoded): {detail}"
)
IllegalHostName = _error("InvalidParameterValue.IllegalHostName", "HostName {value!r} is invalid: {detail}")
InvalidImageForGivenInstanceType = _error(
    "InvalidParameterValue.InvalidImageForGivenInstanceType",
    "The image {image_id} is {arch}; instance type {instance_type} runs {type_arch} images.",
)
InvalidImageIdForResetInstance = _error("InvalidParameterValue.InvalidImageIdForRetsetInstance", "{detail}")
InstanceQuotaExceeded = _error(
    "LimitExceeded.InstanceQuota",
    "Launching {wanted} more instances would exceed the quota of {quota} in {region}; terminate some first.",
)
ResourceInsufficientSpecifiedInstanceType = _error(
    "ResourceInsufficient.SpecifiedInstanceType",
    "Can't place {count} instance(s) of {instance_type}: {detail}; start a worker with `--host`, raise "
    "`--capacity-instances`, or launch fewer.",
)
InstanceOperationInProgress = _error(
    "OperationDenied.InstanceOperationInProgress",
    "The instance {instance_id} is busy with {operation}; try again when it finishes.",
)
SpecifyOneParameter = _error("InvalidParameter.SpecifyOneParameter", "{detail}")
SnapshotNotFound = _error("InvalidParameter.SnapshotNotFound", "{detail}")
DataDiskNotBelongSpecifiedInstance = _error(
    "InvalidParameter.DataDiskNotBelongSpecifiedInstance", "The disk {disk_id} is not a data disk of {instance_id}."
)
DataDiskIdContainsRootDisk = _error(
    "InvalidParameter.DataDiskIdContainsRootDisk",
    "{disk_id} is the system disk of {instance_id}; it is always included. List data disks only.",
)


class InstanceStateError(CvmError):
    """The instance {instance_id} is {state}; {action} needs it {needed}."""

    def __init__(self, instance_id: str, state: str, action: str, needed: str) -> None:
        from stratus.domain.states import instance_state_code

        super().__init__(instance_id=instance_id, state=state, action=action, needed=needed)
        self.code = instance_state_code(state)  # type: ignore[misc]
InvalidTimeFormat = _error(
    "InvalidParameterValue.InvalidTimeFormat", "{name} must be a time like 2026-06-01 00:00:00."
)

# --- region copies and sharing (contract §5.5–5.7, rules 4 and 5)
SyncImageBusy = _error(
    "FailedOperation.InvalidImageState", "The image {image_id} is {state}; sync it when it is NORMAL."
)
InvalidImageIdTooLarge = _error(
    "InvalidImageId.TooLarge",
    "The image {image_id} is {size} bytes; SyncImages copies images of at most {limit} bytes "
    "(limits.sync_max_image_bytes).",
)
InvalidParameterValueInvalidRegion = _error("InvalidParameterValue.InvalidRegion", "{detail}")
InvalidRegionUnavailable = _error(
    "InvalidRegion.Unavailable",
    "The region {region} does not accept image copies (its sync_target setting is false); choose another.",
)
UnsupportedOperationRegion = _error("UnsupportedOperation.Region", "{detail}")
SyncEncryptImageNotSupport = _error(
    "UnsupportedOperation.SyncEncryptImageNotSupport",
    "Encrypted images are not supported here; call SyncImages without Encrypt.",
)
InvalidKmsKeyId = _error(
    "InvalidParameter.InvalidKmsKeyId", "KmsKeyId is only valid with Encrypt=true, and encryption is not supported."
)
ShareAccountAlreadyExists = _error(
    "FailedOperation.AccountAlreadyExists", "The image {image_id} is already shared with account {account_id}."
)
ShareAccountIsYourSelf = _error(
    "FailedOperation.AccountIsYourSelf",
    "{account_id} is your own account; share the image with other accounts (you always see your own).",
)
InvalidAccountIsYourSelf = _error(
    "InvalidAccountIs.YourSelf", "{account_id} is your own account; an image is never shared with its owner."
)
InvalidAccountIdNotFound = _error("InvalidAccountId.NotFound", "{detail}")
BYOLImageShareFailed = _error(
    "FailedOperation.BYOLImageShareFailed",
    "The image {image_id} has LicenseType BYOL; bring-your-own-license images cannot be shared.",
)
ShareOverQuota = _error(
    "OverQuota",
    "The image {image_id} would be shared with {count} accounts; the limit is {limit}. Cancel some shares "
    "first (`stratus image unshare {image_id} --account ACCOUNT_ID`).",
)
ImageNotBelongToAccount = _error(
    "UnauthorizedOperation.ImageNotBelongToAccount",
    "The image {image_id} belongs to another account; only its owner can {what}.",
)
RequestTimeout = _error("RequestTimeout", "{detail}")
