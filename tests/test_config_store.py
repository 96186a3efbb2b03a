"""The [store] section: SQLite by default; PostgreSQL with a DSN (kept out of the repr), the
instance id and the job lease; bad values refused at load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ebsemu import config
from ebsemu.store.backends import build_store, describe_store, instance_id
from ebsemu.store.postgres import PostgresStore
from ebsemu.store.sqlite import SqliteStore

DSN = "postgresql://ebs:s3cret@db.example:5432/ebsemu"


def _load(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "c.ini"
    path.write_text(text)
    return config.load(path, data_dir=tmp_path / "data")


def test_the_default_store_is_sqlite_in_the_data_directory(tmp_path: Path) -> None:
    loaded = _load(tmp_path, "")
    assert loaded.store_backend == "sqlite"
    assert isinstance(build_store(loaded), SqliteStore)
    assert describe_store(loaded) == str(tmp_path / "data" / "ebsemu.sqlite3")


def test_a_postgresql_store_takes_its_dsn_instance_and_lease(tmp_path: Path) -> None:
    loaded = _load(
        tmp_path,
        f"[store]\nbackend = postgresql\ndsn = {DSN}\ninstance_id = node-a\n"
        "job_lease_seconds = 12.5\n",
    )
    store = build_store(loaded)
    assert isinstance(store, PostgresStore)
    assert (store.instance_id, store.lease_seconds) == ("node-a", 12.5)
    assert store.owner.startswith("node-a#")
    assert "s3cret" not in repr(loaded)
    assert describe_store(loaded) == "postgresql://ebs:***@db.example:5432/ebsemu"


def test_an_instance_id_defaults_to_the_host_name_and_port(tmp_path: Path) -> None:
    loaded = _load(tmp_path, f"[store]\nbackend = postgresql\ndsn = {DSN}\n")
    assert instance_id(loaded).endswith(f":{loaded.port}")


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("backend = mysql\n", "backend must be sqlite or postgresql"),
        ("backend = postgresql\n", "needs dsn"),
        ("backend = postgresql\ndsn = mysql://x/y\n", "needs dsn"),
        (f"backend = postgresql\ndsn = {DSN}\njob_lease_seconds = 0\n", "must be positive"),
    ],
)
def test_a_bad_store_section_is_refused(tmp_path: Path, section: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _load(tmp_path, "[store]\n" + section)


def test_asyncpg_is_loaded_only_for_a_postgresql_store(tmp_path: Path) -> None:
    """The server and the CLI on SQLite start without it."""
    postgresql = tmp_path / "postgresql.ini"
    postgresql.write_text(f"[store]\nbackend = postgresql\ndsn = {DSN}\n")
    code = """
import sys
from pathlib import Path
import ebsemu.app, ebsemu.cli
from ebsemu import config
from ebsemu.store.backends import build_store
data, postgresql = Path(sys.argv[1]), Path(sys.argv[2])
build_store(config.load(None, data_dir=data))
assert "asyncpg" not in sys.modules, "loaded for an SQLite store"
build_store(config.load(postgresql, data_dir=data))
assert "asyncpg" in sys.modules
"""
    argv = [sys.executable, "-c", code, str(tmp_path / "data"), str(postgresql)]
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
