"""The rule for every file a command writes: a user's existing file is never overwritten, and
nothing is written into a folder that already holds files, unless the command's `--force` says
so. Each check runs before any work, so a refusal costs nothing and changes nothing."""

from __future__ import annotations

from pathlib import Path


def _fix(force_option: bool) -> str:
    return "choose another name, or add --force to replace it" if force_option else "choose another name"


def check_new_file(path: Path, option: str, *, force: bool = False, force_option: bool = True) -> None:
    """Refuse `path` (given as `option`) when it is a folder, or an existing file without `force`.
    `force_option` says whether the command has a `--force` to offer in the message."""
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; give the name of a file to write")
    if path.exists() and not force:
        raise ValueError(f"{option} {path} exists; fastgen never overwrites a file: {_fix(force_option)}")


def check_empty_folder(path: Path, option: str, *, force: bool = False, force_option: bool = True) -> None:
    """Refuse `path` (given as `option`) when it is a file, or a folder with files in it without `force`."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} is a file; give a new or empty folder")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise ValueError(
            f"{option} {path} is not empty; fastgen writes only into a new or empty folder: {_fix(force_option)}"
        )


def check_folder(path: Path | None, option: str) -> None:
    """Refuse a `path` (given as `option`) that exists and is not a folder: a cache folder such as
    `--export-dir` may hold other files, but it must not be a user's file."""
    if path is not None and path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} is a file; give a folder")
