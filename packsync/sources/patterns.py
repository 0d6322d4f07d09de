"""gitignore-style patterns for a mapping's ``include`` and ``exclude`` and its ``.packsyncignore``.

The semantics are gitignore's, through ``pathspec``: ``**``, a leading ``/`` anchors to the mapped
folder, a trailing ``/`` matches folders only, ``!`` re-includes, the last matching pattern decides, and
a pattern without a slash matches a name at any depth. Matching ignores case, as packsync always has.

Most lists are names only (``*.jpg``, ``.*``, ``@eaDir/``): those are matched against each name the
walk meets with one compiled regular expression, a few times quicker than matching paths pattern by
pattern, which matters at 100,000 files. Only a list with a path pattern or a negation goes through
pathspec (imported then, not before).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence
from typing import Any

#: The file in a mapped folder whose lines are more exclude patterns (same syntax).
IGNORE_FILE = ".packsyncignore"


def _significant(line: str) -> str | None:
    """The pattern a gitignore line holds (None: blank or a comment). Trailing spaces are dropped
    unless escaped."""
    line = line.rstrip("\n")
    stripped = line if line.endswith("\\ ") else line.rstrip()
    return None if not stripped or stripped.startswith("#") else stripped


def _name_only(pattern: str, walked: bool) -> str | None:
    """A pattern that names a file or folder at any depth, as a plain glob (a trailing ``/`` kept to say
    "folders only"; only where the caller asks about every folder on a path, ``walked``); None for a
    negation, a path, an escape or a folder-only pattern the caller cannot see the folders of."""
    if pattern.startswith("!"):
        return None
    body = pattern[1:] if pattern.startswith(("\\#", "\\!")) else pattern
    if "/" in body.rstrip("/") or body.startswith("/") or "\\" in body or (body.endswith("/") and not walked):
        return None
    return body.replace("[^", "[!")  # both negate a class in gitignore; fnmatch knows only [!


def _names(globs: Sequence[str]) -> Callable[[str], Any]:
    if not globs:
        return lambda _name: None
    return re.compile("|".join(fnmatch.translate(glob) for glob in globs), re.IGNORECASE | re.DOTALL).match


def check(lines: Sequence[str]) -> str | None:
    """Why ``lines`` are not a pattern list packsync can use (None: they are)."""
    try:
        Patterns(lines)
    except ValueError as exc:
        return str(exc)
    return None


class Patterns:
    """A list of gitignore patterns, compiled once: ``matches`` says whether the last pattern that
    matches a path includes it (for an exclude list: excludes it); ``deciding`` names that pattern."""

    def __init__(self, lines: Sequence[str], walked: bool = True) -> None:
        """``walked``: the caller asks about every folder of a path before its files (an exclude list,
        pruning the walk); an include list is asked about files only. A pattern that is not one is a
        ``ValueError`` that names it."""
        self.patterns = [p for p in map(_significant, lines) if p is not None]
        names = [_name_only(p, walked) for p in self.patterns]
        self._singles: list[tuple[str, Patterns]] | None = None
        self.simple = all(name is not None for name in names)
        if self.simple:
            globs = [name for name in names if name is not None]
            self._files = _names([g for g in globs if not g.endswith("/")])
            self._folders = _names([g.rstrip("/") for g in globs])
        else:
            import pathspec  # only for lists that need paths or negations (it takes 0.2 s to import)

            for pattern in self.patterns:
                try:
                    pathspec.GitIgnoreSpec.from_lines([pattern])
                except (ValueError, TypeError) as exc:
                    raise ValueError(f"{pattern!r} is not a pattern ({exc})") from None
            self._spec = pathspec.GitIgnoreSpec.from_lines([p.lower() for p in self.patterns])

    def matches(self, rel: str, name: str, folder: bool) -> bool:
        """Whether the pattern list selects ``rel`` (the path below the mapped folder; ``name`` its last part)."""
        if self.simple:
            return (self._folders if folder else self._files)(name) is not None
        return bool(self._spec.match_file(rel.lower() + "/" if folder else rel.lower()))

    def deciding(self, rel: str, name: str, folder: bool) -> str | None:
        """The pattern that decided ``matches`` for ``rel`` (None: no pattern matched)."""
        if self.simple:
            if self._singles is None:
                self._singles = [(pattern, Patterns([pattern])) for pattern in reversed(self.patterns)]
            return next((pattern for pattern, single in self._singles if single.matches(rel, name, folder)), None)
        index = self._spec.check_file(rel.lower() + "/" if folder else rel.lower()).index
        return self.patterns[index] if index is not None else None
