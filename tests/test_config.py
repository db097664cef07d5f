"""Configuration: validation of the TOML file and the environment (one line naming the key and the file),
the precedence docs/config.md states, and what `stratus` prints when the configuration is bad."""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

import pytest

from stratus.config import DEFAULT_CHUNK_SIZE, ConfigError, load_settings
from tests.conftest import STRATUS


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "stratus.toml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_settings(config_file=path, env=env or {})
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    return message[len(f"{path}: "):]


def test_defaults_without_a_file(tmp_path: Path) -> None:
    s = load_settings(data_dir=tmp_path, env={})
    assert [r.name for r in s.regions] == ["ap-guangzhou", "ap-shanghai"]
    gz = s.regions[0]
    assert gz.zones == ("ap-guangzhou-1", "ap-guangzhou-2") and gz.chunk_size == DEFAULT_CHUNK_SIZE
    assert gz.store_path == tmp_path / "regions/ap-guangzhou/store"
    assert gz.bucket("stratus-exports").path == tmp_path / "regions/ap-guangzhou/buckets/stratus-exports"
    assert s.database_url == f"sqlite:///{tmp_path / 'stratus.db'}"
    assert s.limits.task_lease_seconds == 30.0 and s.quotas.images_per_region == 500 and s.workers == 2
    assert s.instance_type("SR1.MEDIUM4").architecture == "arm"


def test_a_full_file_is_read(tmp_path: Path) -> None:
    path = write(tmp_path, """
workers = 3
database_url = "postgresql://u@h/db"
[import]
url_allow = ["10.0.0.0/8"]
[limits]
task_lease_seconds = 5
max_request_bytes = 2048
[quotas]
images_per_region = 0
[[instance_types]]
name = "X.ONE"
cpu = 1
memory_gib = 1
[[regions]]
name = "eu-test"
store = "/srv/store"
chunk_size = 4194304
compute = "qemu"
sync_target = false
buckets = [{name = "b1", path = "/srv/b1"}, {name = "b2"}]
""")
    s = load_settings(data_dir=tmp_path, config_file=path, env={})
    assert s.workers == 3 and s.database_url == "postgresql://u@h/db"
    assert s.import_url_allow == (ipaddress.ip_network("10.0.0.0/8"),)
    assert s.limits.task_lease_seconds == 5.0 and s.limits.max_request_bytes == 2048
    assert s.quotas.images_per_region == 0 and [t.name for t in s.instance_types] == ["X.ONE"]
    (r,) = s.regions
    assert (r.name, r.zones, r.store_path, r.chunk_size, r.compute, r.sync_target) == \
        ("eu-test", ("eu-test-1",), Path("/srv/store"), 4194304, "qemu", False)
    assert [(b.name, b.path) for b in r.buckets] == \
        [("b1", Path("/srv/b1")), ("b2", tmp_path / "regions/eu-test/buckets/b2")]


@pytest.mark.parametrize(("text", "expected"), [
    ("[limits]\ntask_lease_seconds = 0\n", "limits.task_lease_seconds: must be > 0"),
    ("[limits]\ntask_lease_seconds = -1.5\n", "limits.task_lease_seconds: must be > 0"),
    ("[limits]\nmax_redirects = -1\n", "limits.max_redirects: must be >= 0"),
    ("[quotas]\nimages_per_region = -5\n", "quotas.images_per_region: must be >= 0"),
    ("[limits]\ntask_lease_secs = 3\n", "limits.task_lease_secs: unknown key"),
    ("[limit]\ntask_lease_seconds = 3\n", "limit: unknown key"),
    ("colour = 'blue'\n", "colour: unknown key"),
    ("[limits]\nmax_upload_bytes = '64G'\n", "limits.max_upload_bytes: must be an integer"),
    ("[limits]\nmax_upload_bytes = 1.5\n", "limits.max_upload_bytes: must be an integer"),
    ("[limits]\nmax_upload_bytes = true\n", "limits.max_upload_bytes: must be an integer"),
    ("[quotas]\nimages_per_region = '5'\n", "quotas.images_per_region: must be an integer"),
    ("workers = -1\n", "workers: must be >= 0"),
    ("limits = 3\n", "limits: must be a table"),
    ("regions = []\n", "regions: must not be empty"),
    ("[[regions]]\nname = 'a'\n[[regions]]\nname = 'a'\n", "regions: duplicate region 'a'"),
    ("[[regions]]\nname = 'a'\nchunk_size = 1000000\n", "regions.0.chunk_size: must be a power of two"),
    ("[[regions]]\nname = 'a'\nchunk_size = 1024\n", "regions.0.chunk_size: must be a power of two"),
    ("[[regions]]\nname = '../etc'\n", "regions.0.name: must be letters, digits"),
    ("[[regions]]\nzones = ['z']\n", "regions.0.name: is required"),
    ("[[regions]]\nname = 'a'\nzones = []\n", "regions.0.zones: must not be empty"),
    ("[[regions]]\nname = 'a'\nzones = ['']\n", "regions.0.zones.0: must not be empty"),
    ("[[regions]]\nname = 'a'\nzones = ['z', 'z']\n", "regions.0.zones: duplicate zone 'z'"),
    ("[[regions]]\nname = 'a'\ncompute = 'kvm'\n", "regions.0.compute: must be 'disk' or 'qemu'"),
    ("[[regions]]\nname = 'a'\nsync_target = 'no'\n", "regions.0.sync_target: must be true or false"),
    ("[[regions]]\nname = 'a'\nbuckets = [{name = 'x'}, {name = 'x'}]\n", "regions.0.buckets: duplicate bucket 'x'"),
    ("[[regions]]\nname = 'a'\nstore = 5\n", "region a: `store` is a path or a table"),
    ("[import]\nurl_allow = ['10.0.0.0/33']\n", "import.url_allow.0: '10.0.0.0/33' is not a CIDR"),
    ("[import]\nurl_allow = '10.0.0.0/8'\n", "import.url_allow: must be an array"),
    ("[[instance_types]]\nname = 'X'\ncpu = 0\nmemory_gib = 1\n", "instance_types.0.cpu: must be > 0"),
    ("[[instance_types]]\nname = 'X'\ncpu = 1\nmemory_gib = 1\narchitecture = 'sparc'\n",
     "instance_types.0.architecture: must be 'x86_64', 'arm' or 'i386'"),
    ("database_url = 'mysql://x'\n", "database_url: 'mysql://x' is not a sqlite"),
])
def test_bad_values_are_one_line_naming_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    assert error_of(tmp_path, text).startswith(expected)


def test_every_problem_is_named_in_the_one_line(tmp_path: Path) -> None:
    message = error_of(tmp_path, "[limits]\ntask_lease_seconds = 0\nmax_redirects = -1\nbogus = 1\n")
    for part in ("limits.task_lease_seconds: must be > 0", "limits.max_redirects: must be >= 0",
                 "limits.bogus: unknown key"):
        assert part in message


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: cannot read the config file \(FileNotFoundError"):
        load_settings(config_file=tmp_path / "nope.toml", env={})
    with pytest.raises(ConfigError, match=r"stratus\.toml: not valid TOML"):
        load_settings(config_file=write(tmp_path, "[limits\n"), env={})


def test_environment_is_validated_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^environment: STRATUS_COMPUTE: must be 'disk' or 'qemu'$"):
        load_settings(data_dir=tmp_path, env={"STRATUS_COMPUTE": "kvm"})
    with pytest.raises(ConfigError, match=r"^environment: STRATUS_IMPORT_URL_ALLOW: 'nonsense' is not a CIDR"):
        load_settings(data_dir=tmp_path, env={"STRATUS_IMPORT_URL_ALLOW": "10.0.0.0/8, nonsense"})
    with pytest.raises(ConfigError, match=r"^environment: STRATUS_DATABASE_URL: 'db\.sqlite' is not a"):
        load_settings(data_dir=tmp_path, env={"STRATUS_DATABASE_URL": "db.sqlite"})


def test_environment_overrides_the_file_as_documented(tmp_path: Path) -> None:
    """docs/config.md: defaults < the file < the environment (< --data-dir for the data directory)."""
    path = write(tmp_path, f"""
data_dir = "{tmp_path / 'from-file'}"
database_url = "sqlite:///from-file.db"
[import]
url_allow = ["10.0.0.0/8"]
[[regions]]
name = "r1"
compute = "disk"
""")
    env = {"STRATUS_DATA_DIR": str(tmp_path / "from-env"), "STRATUS_DATABASE_URL": "postgresql://env@h/db",
           "STRATUS_IMPORT_URL_ALLOW": "127.0.0.2/32", "STRATUS_COMPUTE": "qemu"}
    s = load_settings(config_file=path, env=env)
    assert s.data_dir == tmp_path / "from-env"  # the file won over the environment here before
    assert s.database_url == "postgresql://env@h/db"
    assert s.import_url_allow == (ipaddress.ip_network("127.0.0.2/32"),)
    assert s.regions[0].compute == "qemu"
    assert load_settings(data_dir=tmp_path / "opt", config_file=path, env=env).data_dir == tmp_path / "opt"
    # STRATUS_CONFIG names the file; an empty allowlist in the environment still overrides the file's.
    s = load_settings(env={"STRATUS_CONFIG": str(path), "STRATUS_IMPORT_URL_ALLOW": ""})
    assert s.data_dir == tmp_path / "from-file" and s.database_url == "sqlite:///from-file.db"
    assert s.import_url_allow == () and s.regions[0].compute == "disk"


def test_settings_are_immutable(tmp_path: Path) -> None:
    s = load_settings(data_dir=tmp_path, env={})
    with pytest.raises(ValueError, match="frozen"):
        s.limits.task_lease_seconds = 1  # type: ignore[misc]


@pytest.mark.parametrize("verb", [["serve", "--port", "1"], ["worker"], ["account", "list"], ["fsck"]])
def test_the_cli_prints_one_line_and_exits_non_zero(tmp_path: Path, verb: list[str]) -> None:
    path = write(tmp_path, "[limits]\ntask_lease_seconds = 0\n")
    res = subprocess.run([STRATUS, *verb, "--data-dir", str(tmp_path / "var"), "--config", str(path)],
                         capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert res.returncode == 2, res
    assert res.stderr.strip() == f"error: {path}: limits.task_lease_seconds: must be > 0", res.stderr
    assert "Traceback" not in res.stdout + res.stderr and not (tmp_path / "var").exists()
