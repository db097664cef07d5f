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
