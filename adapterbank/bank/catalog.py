"""BANK/catalog.sqlite: one row per task, so listing, showing and describing tasks reads one file, not one per task.

The task files stay the source of truth. Each row carries the key (size, mtime_ns) of the file it was taken
from; a reader uses a row only while its file still has that key, and reads the file otherwise. So a writer that
dies between publishing a task file and updating its row, or a file replaced by hand, costs a file read, never a
wrong answer; `bank verify` reports such rows and `--repair` rewrites the catalog from the files.

Rows are written only by the bank's writers, under its lock, right after the task file is published (SQLite with a
rollback journal and synchronous=FULL: a transaction is whole or absent after a crash). Every change bumps a
generation number, kept per row and for the catalog. Readers open it read-only with trusted_schema=OFF and refuse a
file whose schema is not exactly ours; the values themselves are checked by the store like any attribute of a
task file (a catalog is as untrusted as the rest of a bank).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from adapterbank.atomic_files import write_whole
from adapterbank.bank.paths import regular_file

CATALOG_FILE = "catalog.sqlite"
CATALOG_VERSION = 1
TASK_COLUMNS = (
    "name", "method", "config", "class_names", "num_classes", "shapes", "num_values", "metrics", "training",
    "created", "updated", "fingerprint", "file_key", "generation",
)  # fmt: skip
_MARKS = ",".join("?" * len(TASK_COLUMNS))
_SCHEMA = {
    "meta": "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "tasks": "CREATE TABLE tasks (name TEXT PRIMARY KEY, method TEXT, config TEXT, class_names TEXT, num_classes "
    "INTEGER, shapes TEXT, num_values INTEGER, metrics TEXT, training TEXT, created TEXT, updated TEXT, fingerprint "
    "TEXT, file_key TEXT, generation INTEGER)",
}
_BUSY_SECONDS = 30.0  # a reader waits this long for a writer's transaction (they last milliseconds)


class CatalogUnusable(Exception):
    """The catalog is missing, damaged, locked for too long or not ours: read the task files instead."""


def file_key(path: Path, strict: bool = False) -> str | None:
    """What identifies one version of a file without reading it: size and modification time in nanoseconds (not the
    inode: a bank copied with its times, as rsync -a or cp -p do, keeps a usable catalog). `strict` adds the inode
    and change time, for keys kept by one process only (a runtime's resident tasks): a file replaced within one
    tick of the clock by one of the same size is still seen. None when `path` is not a regular file."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    return f"{_key(info)}:{info.st_ino}:{info.st_ctime_ns}" if strict else _key(info)


def scan_keys(folder: Path, suffix: str) -> dict[str, str]:
    """{stem: file_key} of the regular files `*suffix` in one folder, in one directory pass."""
    found = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            if not entry.name.endswith(suffix):
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:  # removed since the folder was read
                continue
            if stat.S_ISREG(info.st_mode):
                found[entry.name[: -len(suffix)]] = _key(info)
    return found


def _key(info: os.stat_result) -> str:
    return f"{info.st_size}:{info.st_mtime_ns}"


def key_size(key: str) -> int:
    return int(key.split(":", 1)[0])


class Catalog:
    def __init__(self, bank: Path) -> None:
        self.file = Path(bank) / CATALOG_FILE

    def exists(self) -> bool:
        return regular_file(self.file)

    # ---- reading (no lock) ----------------------------------------------------------------------------------

    def _side_files(self) -> list[Path]:
        return [self.file.with_name(CATALOG_FILE + suffix) for suffix in ("-journal", "-wal", "-shm")]

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        if not self.exists():
            raise CatalogUnusable("no catalog (a bank made before catalogs, or it was removed)")
        for side in self._side_files():  # SQLite would open it: a FIFO blocks, a link leads out of the bank
            if side.is_symlink() or (side.exists() and not regular_file(side)):
                raise CatalogUnusable(f"{side.name} is not a regular file")
        conn = _open_checked(self.file, "ro")
        try:
            yield conn
        except sqlite3.Error as exc:
            raise CatalogUnusable(str(exc)) from exc
        finally:
            conn.close()

    def rows(self, columns: Sequence[str], names: Sequence[str] | None = None) -> dict[str, Mapping[str, Any]]:
        """{name: row} with `columns` (and name, file_key, generation), of every task or of `names`."""
        wanted = list(dict.fromkeys(["name", "file_key", "generation", *columns]))
        if not set(wanted) <= set(TASK_COLUMNS):
            raise ValueError(f"unknown catalog columns {sorted(set(wanted) - set(TASK_COLUMNS))}")
        query = f"SELECT {', '.join(wanted)} FROM tasks"
        with self._reading() as conn:
            if names is None:
                found = conn.execute(query).fetchall()
            else:
                found = []
                for start in range(0, len(names), 500):  # SQLite bounds the parameters of one statement
                    chunk = list(names[start : start + 500])
                    marks = ",".join("?" * len(chunk))
                    found += conn.execute(f"{query} WHERE name IN ({marks})", chunk).fetchall()
        return {row["name"]: row for row in found if isinstance(row["name"], str)}

    def generation(self) -> int:
        with self._reading() as conn:
            return _generation(conn)

    # ---- writing (the bank's lock held) ---------------------------------------------------------------------

    def put(self, row: Mapping[str, Any]) -> int:
        """Add or replace one task's row; returns its generation."""
        with self._writing() as conn:
            generation = _generation(conn) + 1
            values = {**row, "generation": generation}
            conn.execute(f"INSERT OR REPLACE INTO tasks VALUES ({_MARKS})", [values[c] for c in TASK_COLUMNS])
            _set_generation(conn, generation)
        return generation

    def drop(self, name: str) -> None:
        with self._writing() as conn:
            conn.execute("DELETE FROM tasks WHERE name = ?", (name,))
            _set_generation(conn, _generation(conn) + 1)

    def rewrite(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """A new catalog holding exactly `rows`, published whole (an unusable old one is simply replaced); its
        generation continues past the old one's so that no reader sees it go backwards."""
        try:
            previous = self.generation()
        except CatalogUnusable:
            previous = 0
        generation = previous + 1

        def build(tmp: Path) -> None:
            conn = _connect(tmp, "rwc")
            try:
                conn.execute("BEGIN")
                for sql in _SCHEMA.values():
                    conn.execute(sql)
                conn.execute("INSERT INTO meta VALUES ('version', ?), ('generation', ?)", (CATALOG_VERSION, generation))
                conn.executemany(
                    f"INSERT INTO tasks VALUES ({_MARKS})",
                    [[{**row, "generation": generation}[c] for c in TASK_COLUMNS] for row in rows],
                )
                conn.execute("COMMIT")
            finally:
                conn.close()

        self._remove_side_files()  # a journal of the replaced file would be played into the new one
        write_whole(self.file, build)

    def _remove_side_files(self, only_foreign: bool = False) -> None:
        """Remove the catalog's journal files (`only_foreign`: only those that are links, FIFOs or folders, which
        SQLite would follow or block on). Writers only, under the bank's lock."""
        for side in self._side_files():
            if side.is_symlink() or side.is_file():
                if not only_foreign or side.is_symlink() or not regular_file(side):
                    side.unlink()
            elif side.exists():  # a folder, FIFO or device
                if side.is_dir():
                    raise CatalogUnusable(f"{side.name} is a folder")
                side.unlink()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        self._remove_side_files(only_foreign=True)  # SQLite would follow a link out of the bank, block on a FIFO
        if not self.exists():
            raise CatalogUnusable("no catalog")
        conn = _open_checked(self.file, "rw")
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise CatalogUnusable(str(exc)) from exc
        finally:
            conn.close()


def _connect(file: Path, mode: str) -> sqlite3.Connection:
    conn = sqlite3.connect(
        f"file:{quote(str(file))}?mode={mode}", uri=True, timeout=_BUSY_SECONDS, isolation_level=None
    )
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA trusted_schema = OFF")  # a crafted schema runs no functions of ours
    if mode != "ro":
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute("PRAGMA synchronous = FULL")
    return conn


def _open_checked(file: Path, mode: str) -> sqlite3.Connection:
    """A connection to a catalog whose schema is ours; CatalogUnusable otherwise."""
    try:
        conn = _connect(file, mode)
    except sqlite3.Error as exc:
        raise CatalogUnusable(str(exc)) from exc
    try:
        _check_schema(conn)
    except sqlite3.Error as exc:
        conn.close()
        raise CatalogUnusable(str(exc)) from exc
    return conn


def _check_schema(conn: sqlite3.Connection) -> None:
    """Exactly our tables (no views, triggers or extra indexes a crafted file could bring)."""
    found = conn.execute("SELECT type, name, sql FROM sqlite_master").fetchall()
    tables = {row["name"]: row["sql"] for row in found if row["type"] == "table"}
    others = [  # only the indexes SQLite makes for primary keys (no SQL of their own) may be there
        row["name"] for row in found
        if row["type"] != "table" and not (row["type"] == "index" and row["sql"] is None
                                           and str(row["name"]).startswith("sqlite_autoindex_"))
    ]  # fmt: skip
    if tables != _SCHEMA or others:
        raise sqlite3.DatabaseError("the catalog's schema is not adapterbank's")
    version = conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
    if version is None or version["value"] != CATALOG_VERSION:
        raise sqlite3.DatabaseError(f"catalog version {version and version['value']!r}, expected {CATALOG_VERSION}")


def _generation(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
    if row is None or not isinstance(row["value"], int) or row["value"] < 0:
        raise sqlite3.DatabaseError("the catalog has no valid generation")
    return row["value"]


def _set_generation(conn: sqlite3.Connection, generation: int) -> None:
    conn.execute("UPDATE meta SET value = ? WHERE key = 'generation'", (generation,))
