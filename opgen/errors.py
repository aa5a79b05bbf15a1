"""User-facing errors of the compiler: each one names a place in a spec file."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    """A 1-based line and column in a spec file, as printed to the user."""

    path: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}"


class SpecError(Exception):
    """A broken spec: printed as ``path:line:col: message``, exit status 2."""

    def __init__(self, location: Location, message: str) -> None:
        super().__init__(f"{location}: {message}")
        self.location = location
        self.message = message


def did_you_mean(name: str, candidates: "list[str] | tuple[str, ...]") -> str:
    """A ' (did you mean 'x'?)' suffix for a misspelt name, or ''."""
    import difflib

    close = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""
