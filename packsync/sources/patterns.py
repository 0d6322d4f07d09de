"""gitignore-style patterns for a mapping's ``include`` and ``exclude`` and its ``.packsyncignore``.

The semantics are gitignore's: ``**`` matches any number of folders, a leading ``/`` anchors to the
mapped folder, a trailing ``/`` matches folders only, ``!`` re-includes, the last matching pattern
decides, a pattern without a slash matches a name at any depth, and ``\\`` makes the next character
plain. Matching ignores case, as packsync always has.

Matching costs time linear in the path whatever the pattern (at most path × pattern): an ignore file
may be a stranger's (a collaborator's in a shared folder), and a backtracking translation of
``*a*a*a…*b`` (pathspec's, which packsync used before) takes minutes against a 40-character name while
holding the GIL. So a pattern is cut at its slashes; each part is a
glob made a regular expression whose stars are atomic (``(?>.*?abc)``, as ``fnmatch`` builds them: a
star takes the first place the text after it fits and never goes back, which for a glob loses no
match), and the parts meet the path's folders in the same greedy way, ``**`` playing the star.

Most lists are names only (``*.jpg``, ``.*``, ``@eaDir/``): those are matched against each name the
walk meets with one compiled regular expression, a few times quicker than matching pattern by
pattern, which matters at 100,000 files.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

#: The file in a mapped folder whose lines are more exclude patterns (same syntax).
IGNORE_FILE = ".packsyncignore"

#: Excluded unless a mapping says ``default_excludes = false``: hidden files, editors' and downloads'
#: leftovers, and what NAS boxes, Windows and macOS leave behind (Synology's thumbnails, recycle bins).
DEFAULT_EXCLUDE = [".*", "*~", "*.tmp", "*.part", "@eaDir/", "\\#recycle/", ".thumbnails/", "Thumbs.db", ".DS_Store",
                   "._*", "desktop.ini"]

#: One part of a pattern, matched against one name of a path; ``None`` for ``**`` (any number of names).
Part = Callable[[str], Any] | None


def _significant(line: str) -> str | None:
    """The pattern a gitignore line holds (None: blank or a comment). Trailing spaces are dropped
    unless escaped."""
    line = line.rstrip("\n")
    stripped = line if line.endswith("\\ ") else line.rstrip()
    return None if not stripped or stripped.startswith("#") else stripped


def _class(text: str, start: int) -> tuple[str, int]:
    """The bracket expression at ``text[start]`` (a ``[``) as a regular expression, and where the text
    after it starts. ``[!`` and ``[^`` both negate; a ``[`` never closed matches nothing (as in git)."""
    at = start + 1
    negated = at < len(text) and text[at] in "!^"
    at += negated
    ranges: list[tuple[str, str]] = []
    while at < len(text) and (text[at] != "]" or at == start + 1 + negated):
        low, at = (text[at + 1], at + 2) if text[at] == "\\" and at + 1 < len(text) else (text[at], at + 1)
        high = low
        if at + 1 < len(text) and text[at] == "-" and text[at + 1] != "]":
            high, at = (text[at + 2], at + 3) if text[at + 1] == "\\" and at + 2 < len(text) else (text[at + 1], at + 2)
        ranges.append((low, high))
    if at >= len(text):
        return "(?!)", len(text)
    members = "".join(re.escape(low) if low == high else f"{re.escape(low)}-{re.escape(high)}"
                      for low, high in ranges if low <= high)
    if not members:
        return ("." if negated else "(?!)"), at + 1
    return f"[{'^' if negated else ''}{members}]", at + 1


def _glob(text: str) -> str:
    """One name's glob (no slash) as a regular expression that cannot backtrack: the runs between its
    stars are each one character wide per piece, a star before a run is an atomic lazy ``.*?``, and only
    the last star is a plain ``.*`` (it must reach the end of the name)."""
    runs: list[list[str]] = [[]]
    at = 0
    while at < len(text):
        char = text[at]
        if char == "[":
            piece, at = _class(text, at)
            runs[-1].append(piece)
            continue
        if char == "*":
            if len(runs) == 1 or runs[-1]:  # ** within a name is one star
                runs.append([])
        elif char == "\\":
            if at + 1 == len(text):
                raise ValueError("ends with a lone backslash")
            at += 1
            runs[-1].append(re.escape(text[at]))
        else:
            runs[-1].append("." if char == "?" else re.escape(char))
        at += 1
    texts = ["".join(run) for run in runs]
    if len(texts) == 1:
        return texts[0]
    first, *middle, last = texts
    return first + "".join(f"(?>.*?{run})" for run in middle) + f".*{last}"


def _compiled(regex: str) -> Callable[[str], Any]:
    return re.compile(f"(?s:{regex})\\Z", re.IGNORECASE).match


def _any(_name: str) -> bool:
    return True


def _none(_name: str) -> bool:
    return False


def _fits(parts: Sequence[Part], names: Sequence[str]) -> bool:
    """Whether ``parts`` match the whole path ``names``: glob matching's greedy two-pointer walk, with
    ``**`` as its star, so at most (parts × names) names are matched, never an exponential number."""
    at = done = 0
    star, resume = -1, 0
    while done < len(names):
        part = parts[at] if at < len(parts) else _none
        if part is None:
            star, resume, at = at, done, at + 1
        elif part(names[done]):
            at, done = at + 1, done + 1
        elif star >= 0:
            resume += 1
            at, done = star + 1, resume
        else:
            return False
    return all(part is None for part in parts[at:])


#: The longest pattern line taken: Linux's longest path (PATH_MAX).
MAX_PATTERN = 4096


class _Rule:
    """One pattern of a list, cut at its slashes. ``name`` is the regular expression of a pattern that
    names a file or folder at any depth (no slash but a trailing one, no ``!``); None otherwise."""

    def __init__(self, pattern: str) -> None:
        if len(pattern) > MAX_PATTERN:  # linear, but a line of 200,000 characters compiles for seconds
            raise ValueError(f"{pattern[:40]!r}… is not a pattern (longer than {MAX_PATTERN:,} characters, "
                             "which no path is)")
        self.pattern = pattern
        self.negated = pattern.startswith("!")
        body = pattern[1:] if self.negated else pattern
        if not body:
            raise ValueError(f"{pattern!r} is not a pattern (nothing follows the !)")
        self.folders_only = body.endswith("/")
        body = body.rstrip("/")
        anchored = "/" in body
        names = body.removeprefix("/").split("/") if body else []  # a pattern of slashes alone names nothing
        try:
            parts: list[Part] = [None if name == "**" else _compiled(_glob(name)) for name in names]
            self.name = _glob(names[0]) if len(names) == 1 and not anchored and not self.negated else None
        except ValueError as exc:
            raise ValueError(f"{pattern!r} is not a pattern ({exc})") from None
        if names and not anchored:
            parts.insert(0, None)
        self.parts = [part for i, part in enumerate(parts) if part is not None or i == 0 or parts[i - 1] is not None]
        # A trailing ** is everything inside a folder: for a file, at least one more name.
        self.file_parts = [*self.parts[:-1], _any, None] if self.parts and self.parts[-1] is None else self.parts
        self.last_name = self.parts[1] if len(self.parts) == 2 and self.parts[0] is None else None

    def matches(self, names: Sequence[str], folder: bool) -> bool:
        """Whether this pattern matches the path ``names`` itself (a folder's, with ``folder``)."""
        if not self.parts or (self.folders_only and not folder):
            return False
        if self.last_name is not None:
            return self.last_name(names[-1]) is not None
        return _fits(self.parts if folder else self.file_parts, names)

    def deciding(self, names: Sequence[str], folder: bool) -> _Rule:
        return self


class _Names:
    """Consecutive patterns that each name a file or folder at any depth, matched together with one
    regular expression: the usual lists are only this, and at 100,000 files one match per name is a few
    times quicker than one per pattern."""

    negated = False

    def __init__(self, rules: Sequence[_Rule]) -> None:
        self.rules = rules
        self.files = _names([rule.name for rule in rules if rule.name is not None and not rule.folders_only])
        self.folders = _names([rule.name for rule in rules if rule.name is not None])

    def matches(self, names: Sequence[str], folder: bool) -> bool:
        return (self.folders if folder else self.files)(names[-1]) is not None

    def deciding(self, names: Sequence[str], folder: bool) -> _Rule | None:
        return next((rule for rule in reversed(self.rules) if rule.matches(names, folder)), None)


def _names(globs: Sequence[str]) -> Callable[[str], Any]:
    if not globs:
        return lambda _name: None
    return _compiled("|".join(f"(?:{glob})" for glob in globs))


def _grouped(rules: Sequence[_Rule]) -> list[_Rule | _Names]:
    """The rules, each run of name patterns made one ``_Names``."""
    runs: list[_Rule | list[_Rule]] = []
    for rule in rules:
        if rule.name is None:
            runs.append(rule)
        elif runs and isinstance(runs[-1], list):
            runs[-1].append(rule)
        else:
            runs.append([rule])
    return [_Names(run) if isinstance(run, list) else run for run in runs]


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
        pruning the walk), so a path below a folder the list selects is never asked about; an include
        list is asked about files only, and selects what is below a folder it selects. A pattern that is
        not one is a ``ValueError`` that names it."""
        self.patterns = [p for p in map(_significant, lines) if p is not None]
        rules = [_Rule(pattern) for pattern in self.patterns]
        self._groups = _grouped(rules)
        self._walked = walked
        self.simple = not self._groups or (len(self._groups) == 1 and isinstance(self._groups[0], _Names)
                                           and (walked or not any(rule.folders_only for rule in rules)))
        self._quick = self._groups[0] if self._groups and isinstance(self._groups[0], _Names) else _Names([])

    def matches(self, rel: str, name: str, folder: bool) -> bool:
        """Whether the pattern list selects ``rel`` (the path below the mapped folder; ``name`` its last part)."""
        if self.simple:
            return (self._quick.folders if folder else self._quick.files)(name) is not None
        rule = self._deciding(rel.split("/"), folder)
        return rule is not None and not rule.negated

    def deciding(self, rel: str, name: str, folder: bool) -> str | None:
        """The pattern that decided ``matches`` for ``rel`` (None: no pattern matched)."""
        rule = self._deciding(rel.split("/"), folder)
        return rule.pattern if rule is not None else None

    def _deciding(self, names: list[str], folder: bool) -> _Rule | None:
        """The rule that decides for the path ``names``: of a list that is not ``walked``, the one that
        selected a folder above it, if one did (nothing below a selected folder is taken back, as in git);
        otherwise the last rule that matches the path itself."""
        if not self._walked:
            for depth in range(1, len(names)):
                above = self._last(names[:depth], True)
                if above is not None and not above.negated:
                    return above
        return self._last(names, folder)

    def _last(self, names: Sequence[str], folder: bool) -> _Rule | None:
        group = next((group for group in reversed(self._groups) if group.matches(names, folder)), None)
        return group.deciding(names, folder) if group is not None else None


@functools.lru_cache(maxsize=16)
def compiled(lines: tuple[str, ...], walked: bool = True) -> Patterns:
    """``Patterns(lines, walked)``, compiled once for the same lines: with a pack per subfolder, every
    subfolder's mapping reads the mapped folder's ``.packsyncignore``, and a long one (256 KiB of
    patterns takes seconds to compile) would otherwise be compiled again for each of them, every scan."""
    return Patterns(lines, walked)
