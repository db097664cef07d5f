"""Docs that cannot drift: every action, setting and command is documented."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from stratus.api.cvm.registry import ACTIONS
from stratus.config import ConfigFile, ImportFile, InstanceType, Limits, Quotas, Region, RegionFile, Settings

DOCS = Path(__file__).resolve().parent.parent / "docs"
README = (DOCS.parent / "README.md").read_text()


def test_every_action_is_in_the_api_doc() -> None:
    api = (DOCS / "api.md").read_text()
    missing = [name for name in ACTIONS if f"`{name}`" not in api]
    assert not missing


def test_every_setting_is_in_the_config_doc() -> None:
    config = (DOCS / "config.md").read_text()
    # every key the file accepts (pydantic models), by its TOML name
    names = [field.alias or name for cls in (ConfigFile, ImportFile, Limits, Quotas, InstanceType, RegionFile)
             for name, field in cls.model_fields.items()]
    missing = [n for n in names if f"`{n}`" not in config and f"`[{n}]`" not in config]
    assert not missing
    assert {f.name for f in dataclasses.fields(Settings)} >= {"data_dir", "database_url", "workers"}
    assert {f.name for f in dataclasses.fields(Region)} >= {"chunk_size", "zones", "buckets"}


def test_readme_names_the_two_commands_and_ci_calls_make_test() -> None:
    assert "make run" in README and "make test" in README
    assert "make test" in (DOCS.parent / ".ci" / "run").read_text()
