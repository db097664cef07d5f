"""Image states and the transitions between them (contract §9)."""

from __future__ import annotations

from enum import StrEnum


class ImageState(StrEnum):
    CREATING = "CREATING"
    NORMAL = "NORMAL"
    CREATEFAILED = "CREATEFAILED"
    SYNCING = "SYNCING"
    IMPORTING = "IMPORTING"
    IMPORTFAILED = "IMPORTFAILED"


class ImageType(StrEnum):
    PUBLIC = "PUBLIC_IMAGE"
    PRIVATE = "PRIVATE_IMAGE"
    SHARED = "SHARED_IMAGE"


class ImageSource(StrEnum):
    OFFICIAL = "OFFICIAL"
    CREATE_IMAGE = "CREATE_IMAGE"
    EXTERNAL_IMPORT = "EXTERNAL_IMPORT"


# Work in flight: the image has no complete manifest yet and can't be deleted or used.
BUSY_STATES = frozenset({ImageState.CREATING, ImageState.SYNCING, ImageState.IMPORTING})
FAILED_STATES = frozenset({ImageState.CREATEFAILED, ImageState.IMPORTFAILED})

_TRANSITIONS: dict[ImageState, frozenset[ImageState]] = {
    ImageState.CREATING: frozenset({ImageState.NORMAL, ImageState.CREATEFAILED}),
    ImageState.IMPORTING: frozenset({ImageState.NORMAL, ImageState.IMPORTFAILED}),
    ImageState.SYNCING: frozenset({ImageState.NORMAL, ImageState.CREATEFAILED}),
    ImageState.NORMAL: frozenset(),
    ImageState.CREATEFAILED: frozenset(),
    ImageState.IMPORTFAILED: frozenset(),
}


def can_transition(old: ImageState, new: ImageState) -> bool:
    return new in _TRANSITIONS[old]


def failed_state_for(state: ImageState) -> ImageState:
    """The failed state an image in `state` falls into when its work fails."""
    return ImageState.IMPORTFAILED if state is ImageState.IMPORTING else ImageState.CREATEFAILED


class InstanceState(StrEnum):
    PENDING = "PENDING"
    LAUNCH_FAILED = "LAUNCH_FAILED"
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    STARTING = "STARTING"
    STOPPING = "STOPPING"
    REBOOTING = "REBOOTING"
    TERMINATING = "TERMINATING"


# Transitional states: an operation is under way, and other operations wait for it.
INSTANCE_BUSY = frozenset({InstanceState.PENDING, InstanceState.STARTING, InstanceState.STOPPING,
                           InstanceState.REBOOTING, InstanceState.TERMINATING})


def instance_state_code(state: str) -> str:
    """The UnsupportedOperation code for an action refused in `state`: LAUNCH_FAILED → InstanceStateLaunchFailed."""
    return "UnsupportedOperation.InstanceState" + "".join(p.capitalize() for p in state.split("_"))
