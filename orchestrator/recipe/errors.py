"""Compiler-style diagnostics for recipes: ``file:line:col: error: <dotted path>: <message>``."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Diagnostic:
    file: str
    line: int  # 1-based
    col: int  # 1-based
    path: str  # dotted path in the recipe, "" for the document
    message: str
    severity: str = "error"

    def format(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.file}:{self.line}:{self.col}: {self.severity}: {where}{self.message}"


class RecipeError(Exception):
    """One or more problems in a recipe; nothing was run."""

    def __init__(self, diagnostics: Iterable[Diagnostic]):
        self.diagnostics = sorted(diagnostics, key=lambda d: (d.file, d.line, d.col, d.path))
        super().__init__(self.format())

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    def format(self) -> str:
        lines = [d.format() for d in self.diagnostics]
        n = len(self.errors)
        lines.append(f"{n} error{'s' if n != 1 else ''}; nothing was run.")
        return "\n".join(lines)


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """A ``; did you mean 'x'?`` suffix, or a list of valid choices when nothing is close."""
    candidates = sorted({str(c) for c in candidates})
    close = difflib.get_close_matches(str(word), candidates, n=1, cutoff=0.6)
    if close:
        return f"; did you mean '{close[0]}'?"
    if not candidates:
        return ""
    if len(candidates) <= 12:
        return "; expected one of: " + ", ".join(candidates)
    return ""
