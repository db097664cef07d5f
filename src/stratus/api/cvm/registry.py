"""Every CVM action in one table: name → (request schema, needs a region, handler)."""

from __future__ import annotations

from stratus.api.cvm import actions, instance_actions, region_actions
from stratus.api.cvm.table import Action

ACTIONS: dict[str, Action] = {
    **actions.ACTIONS,
    **instance_actions.ACTIONS,
    **region_actions.ACTIONS,
}
