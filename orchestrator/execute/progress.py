"""Live progress: a tiny Ray actor that workers push events to, and the terminal view that reads it."""

from __future__ import annotations

import time
from typing import Any


class ProgressBoard:
    """Collects the latest step/loss/message per node (runs as a CPU-less Ray actor)."""

    def __init__(self) -> None:
        self.state: dict[str, dict[str, Any]] = {}

    def update(self, event: dict[str, Any]) -> None:
        node = event.get("node", "?")
        current = self.state.setdefault(node, {})
        current.update({k: v for k, v in event.items() if k != "node"})
        current["updated"] = time.time()

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return self.state


STATE_STYLE = {
    "cached": "dim", "waiting": "yellow", "running": "bold cyan", "done": "green",
    "failed": "bold red", "skipped": "magenta", "interrupted": "red", "not selected": "dim",
}


class RunView:
    """Renders node states; a rich Live table on a terminal, plain lines otherwise (CI, logs)."""

    def __init__(self, console, order: list[str], kinds: dict[str, str]) -> None:
        self.console = console
        self.order = order
        self.kinds = kinds
        self.states: dict[str, str] = {}
        self.started: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self.progress: dict[str, dict[str, Any]] = {}
        self.live = None
        self.interactive = console.is_terminal

    def __enter__(self) -> "RunView":
        if self.interactive:
            from rich.live import Live

            self.live = Live(self.render(), console=self.console, refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.update(self.render())
            self.live.__exit__(*exc)

    def set_state(self, node: str, state: str, note: str = "") -> None:
        previous = self.states.get(node)
        self.states[node] = state
        now = time.time()
        if state == "running":
            self.started[node] = now
        elif state in ("done", "failed", "interrupted"):
            self.ended[node] = now
        if not self.interactive and previous != state:
            took = ""
            if node in self.started and node in self.ended:
                took = f" in {self.ended[node] - self.started[node]:.1f}s"
            self.console.print(f"[{time.strftime('%H:%M:%S')}] {node} ({self.kinds.get(node, '')}): {state}{took}"
                               + (f" — {note}" if note else ""), highlight=False, soft_wrap=True, markup=False)
        self.refresh()

    def update_progress(self, snapshot: dict[str, dict[str, Any]]) -> None:
        self.progress = snapshot
        self.refresh()

    def refresh(self) -> None:
        if self.live is not None:
            self.live.update(self.render())

    def render(self):
        from rich.table import Table

        table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
        for col in ("node", "kind", "state", "elapsed", "progress"):
            table.add_column(col)
        now = time.time()
        for node in self.order:
            state = self.states.get(node, "waiting")
            elapsed = ""
            if node in self.started:
                elapsed = f"{self.ended.get(node, now) - self.started[node]:.0f}s"
            table.add_row(node, self.kinds.get(node, ""), styled(state, STATE_STYLE.get(state, "")), elapsed,
                          escape(_describe(self.progress.get(node, {}))) if state == "running" else "")
        return table


def styled(text: str, style: str) -> str:
    """Rich markup for ``text`` in ``style`` (escaped; no empty tags)."""
    from rich.markup import escape

    return f"[{style}]{escape(text)}[/]" if style else escape(text)


def escape(text: str) -> str:
    from rich.markup import escape as _escape

    return _escape(text)


def _describe(p: dict[str, Any]) -> str:
    parts = []
    if p.get("step") is not None:
        total = p.get("total")
        parts.append(f"step {int(p['step'])}" + (f"/{int(total)}" if total else ""))
    for k, v in p.items():
        if k in ("step", "total", "updated", "message") or not isinstance(v, (int, float)):
            continue
        parts.append(f"{k} {v:.4g}")
    if not parts and p.get("message"):
        parts.append(str(p["message"])[:60])
    return "  ".join(parts)
