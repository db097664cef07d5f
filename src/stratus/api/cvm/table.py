"""The shape of an action table entry: request schema, whether it needs a region, handler."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stratus.api.cvm.params import ActionSchema
from stratus.service.context import Caller, Services


@dataclass(frozen=True)
class Call:
    svc: Services
    caller: Caller
    region: str | None  # validated region name, None for region-less actions
    params: dict[str, Any]
    request_id: str = ""


Handler = Callable[[Call], dict[str, Any]]


@dataclass(frozen=True)
class Action:
    schema: ActionSchema
    handler: Handler
    needs_region: bool = True
    # Answers from the configuration alone: the endpoint may run it on the event loop, without the hop to
    # a worker thread (most of such a request's time), when the only catalog read, the key, is SQLite's.
    on_loop: bool = False
