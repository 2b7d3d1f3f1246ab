"""Paths inside a bank folder that never lead out of it: no component may be a symbolic link.

Every file under a bank is untrusted. A link planted at `BANK/.runs`, `BANK/tasks` or `BANK/.lock` would make a
write or a delete land outside the bank; these helpers refuse to follow one.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from adapterbank.errors import AdapterBankError


def inside(bank: Path, *parts: str, create: bool = False) -> Path:
    """BANK/part/part/...: every component checked (lstat) not to be a link; missing folders made when `create`."""
    path = Path(bank)
    for part in parts:
        if part in ("", ".", "..") or "/" in part:
            raise AdapterBankError(f"invalid path component '{part}' inside bank '{bank}'")
        path = path / part
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            if not create:
                continue
            try:
                os.mkdir(path)
            except FileExistsError:
                mode = os.lstat(path).st_mode
            except OSError as exc:
                raise AdapterBankError(f"cannot create '{path}': {exc.strerror}") from exc
            else:
                continue
        if stat.S_ISLNK(mode):
            raise AdapterBankError(
                f"'{path}' is a symbolic link: adapterbank never follows links inside a bank; remove it"
            )
    return path


def open_nofollow(path: Path, flags: int, mode: int = 0o644) -> int:
    """os.open that refuses a link at the last component (O_NOFOLLOW), with a one-line error."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the last component is a link
            raise AdapterBankError(
                f"'{path}' is a symbolic link: adapterbank never follows links inside a bank; remove it"
            ) from exc
        raise AdapterBankError(f"cannot open '{path}': {exc.strerror}") from exc


def regular_file(path: Path) -> bool:
    """An existing regular file that is not a link (a FIFO, device or folder is never opened as a bank file)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False
