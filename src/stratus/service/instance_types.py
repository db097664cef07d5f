"""Instance types: the catalog is configuration (`instance_types` in docs/config.md); this is the one
lookup that answers for a name a request gave (RunInstances, ResetInstance, DescribeImages' InstanceType)."""

from __future__ import annotations

import re

from stratus.config import InstanceType
from stratus.domain import errors
from stratus.service.context import Services

INSTANCE_TYPE_RE = re.compile(r"^[A-Z][A-Z0-9]*\.[A-Z0-9]+$")


def find_instance_type(svc: Services, instance_type: str) -> InstanceType:
    """The configured instance type; InvalidInstanceType.Malformed or InstanceTypeNotFound."""
    if not INSTANCE_TYPE_RE.match(instance_type):
        raise errors.InvalidInstanceTypeMalformed(value=instance_type)
    itype = svc.settings.instance_type(instance_type)
    if itype is None:
        raise errors.InstanceTypeNotFound(value=instance_type)
    return itype
