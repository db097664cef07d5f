"""A region's chunk store in the TOML file: the table, today's plain path, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from stratus.config import StoreSpec, load_settings


def settings_from(tmp_path: Path, regions: str):  # type: ignore[no-untyped-def]
    cfg = tmp_path / "stratus.toml"
    cfg.write_text(regions)
    return load_settings(data_dir=tmp_path / "var", config_file=cfg, env={})


def test_s3_store_table(tmp_path: Path) -> None:
    s = settings_from(tmp_path, '[[regions]]\nname = "ap-guangzhou"\nzones = ["ap-guangzhou-1"]\n'
                      'store = { type = "s3", endpoint_url = "http://127.0.0.1:8080", bucket = "stratus-gz", '
                      'prefix = "chunks/" }\n')
    region = s.region("ap-guangzhou")
    assert region.store == StoreSpec("s3", "http://127.0.0.1:8080", "stratus-gz", "chunks/")
    assert region.store_path == tmp_path / "var" / "regions" / "ap-guangzhou" / "store"  # scratch space


def test_dir_is_the_default_and_a_plain_path_still_works(tmp_path: Path) -> None:
    s = settings_from(tmp_path, '[[regions]]\nname = "a"\n[[regions]]\nname = "b"\nstore = "/srv/b"\n'
                      '[[regions]]\nname = "c"\nstore = { type = "dir", path = "/srv/c" }\n')
    assert [r.store.type for r in s.regions] == ["dir", "dir", "dir"]
    assert [str(r.store_path) for r in s.regions] == [str(tmp_path / "var/regions/a/store"), "/srv/b", "/srv/c"]


@pytest.mark.parametrize("store", ['{ type = "s3" }', '{ type = "ftp", path = "/x" }',
                                   '{ type = "s3", bucket = "b", secret_key = "no" }', "3"])
def test_bad_store_tables_are_refused_with_the_region_named(tmp_path: Path, store: str) -> None:
    with pytest.raises(ValueError, match="region r1: "):
        settings_from(tmp_path, f'[[regions]]\nname = "r1"\nstore = {store}\n')


def test_export_buckets_in_s3(tmp_path: Path) -> None:
    s = settings_from(tmp_path, '[[regions]]\nname = "r1"\nbuckets = [{ name = "stratus-exports", type = "s3", '
                      'endpoint_url = "http://127.0.0.1:8080", bucket = "exp" }, { name = "local" }]\n')
    s3, local = s.region("r1").buckets
    assert s3.s3 == StoreSpec("s3", "http://127.0.0.1:8080", "exp", "exports/")
    assert local.s3 is None and local.path == tmp_path / "var/regions/r1/buckets/local"
    with pytest.raises(ValueError, match="region r1: bucket 'x' has type 'ftp'"):
        settings_from(tmp_path, '[[regions]]\nname = "r1"\nbuckets = [{ name = "x", type = "ftp" }]\n')
