"""Image, instance and task states and the transitions between them (contract §9).

Every state change in the catalog goes through `check_image`, `check_instance` or `check_task`: a move that
is not in the table is a bug in the caller, and it raises `IllegalTransition` rather than write a state the
contract can't reach. tests/domain/test_states.py walks every pair of each table.
"""

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

class IllegalTransition(RuntimeError):
    """A state change the state machine does not allow: a programming error, never a client's."""

    def __init__(self, what: str, old: str, new: str) -> None:
        super().__init__(f"illegal {what} state transition {old} → {new}")
        self.what, self.old, self.new = what, old, new


IMAGE_TRANSITIONS: dict[ImageState, frozenset[ImageState]] = {
    ImageState.CREATING: frozenset({ImageState.NORMAL, ImageState.CREATEFAILED}),
    ImageState.IMPORTING: frozenset({ImageState.NORMAL, ImageState.IMPORTFAILED}),
    ImageState.SYNCING: frozenset({ImageState.NORMAL, ImageState.CREATEFAILED}),
    ImageState.NORMAL: frozenset(),
    ImageState.CREATEFAILED: frozenset(),
    ImageState.IMPORTFAILED: frozenset(),
}


def can_transition(old: ImageState, new: ImageState) -> bool:
    return new in IMAGE_TRANSITIONS[old]


def check_image(old: str, new: ImageState) -> None:
    """Raise IllegalTransition unless an image may go from `old` to `new`."""
    if not can_transition(ImageState(old), new):
        raise IllegalTransition("image", old, new)


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


_SETTLED = (InstanceState.RUNNING, InstanceState.STOPPED)
INSTANCE_TRANSITIONS: dict[InstanceState, frozenset[InstanceState]] = {
    # A launch ends RUNNING or LAUNCH_FAILED.
    InstanceState.PENDING: frozenset({InstanceState.RUNNING, InstanceState.LAUNCH_FAILED}),
    # Settled states: an operation starts (its transitional state), a VM stops on its own (RUNNING →
    # STOPPED), or a reset / CreateImage records its outcome without a transitional state (X → X, or
    # whichever of the two the VM is found in after a failure).
    InstanceState.RUNNING: frozenset({*_SETTLED, InstanceState.STOPPING, InstanceState.REBOOTING,
                                      InstanceState.TERMINATING}),
    InstanceState.STOPPED: frozenset({*_SETTLED, InstanceState.STARTING, InstanceState.TERMINATING}),
    InstanceState.LAUNCH_FAILED: frozenset({InstanceState.TERMINATING}),
    # An operation ends in its target state or, when it fails, in the state the instance is found in.
    InstanceState.STARTING: frozenset(_SETTLED),
    InstanceState.STOPPING: frozenset(_SETTLED),
    InstanceState.REBOOTING: frozenset(_SETTLED),
    # A terminate that succeeds deletes the row; one that fails gives the instance back as it was.
    InstanceState.TERMINATING: frozenset({*_SETTLED, InstanceState.LAUNCH_FAILED}),
}


def check_instance(old: str, new: InstanceState) -> None:
    """Raise IllegalTransition unless an instance may go from `old` to `new`."""
    if new not in INSTANCE_TRANSITIONS[InstanceState(old)]:
        raise IllegalTransition("instance", old, new)


class TaskState(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"


TASK_TRANSITIONS: dict[TaskState, frozenset[TaskState]] = {
    TaskState.QUEUED: frozenset({TaskState.RUNNING}),
    # RUNNING → RUNNING: a worker claims a task whose lease expired (its holder died); → QUEUED: a worker
    # shutting down gives it back.
    TaskState.RUNNING: frozenset({TaskState.RUNNING, TaskState.QUEUED, TaskState.DONE, TaskState.FAILED}),
    TaskState.DONE: frozenset(),
    TaskState.FAILED: frozenset(),
}


def check_task(old: str, new: TaskState) -> None:
    """Raise IllegalTransition unless a task may go from `old` to `new`."""
    if new not in TASK_TRANSITIONS[TaskState(old)]:
        raise IllegalTransition("task", old, new)

