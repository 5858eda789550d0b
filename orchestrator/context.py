"""The RunContext a component receives, without Ray: files, logs, metrics, checkpoints.

``NodeContext`` is a plain picklable object; the executors add what Ray provides by giving it
hooks (a progress sink, a report function, a checkpoint lookup), so components stay unaware of Ray
and can also be run in-process (tests, `orch` debugging) through the same class.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator


@dataclass
class NodeContext:
    node: str
    entry_dir: Path  # the node's cache entry: outputs/<name>/, log.txt, metrics.json, tensorboard/
    recipe_dir: Path
    seed: int = 0
    world_rank: int = 0
    world_size: int = 1
    num_gpus: int = 0
    # Hooks set by executors; all optional so the context works in-process.
    progress_sink: Callable[[dict[str, Any]], None] | None = None
    report_fn: Callable[[dict[str, float], Path | None], None] | None = None
    checkpoint_fn: Callable[[], Path | None] | None = None
    echo: bool = False  # also print log lines to stderr
    _tb: Any = field(default=None, repr=False, compare=False)

    # -- paths -----------------------------------------------------------------------------
    @property
    def work_dir(self) -> Path:
        path = self.entry_dir / "work"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def output_dir(self, name: str) -> Path:
        path = self.entry_dir / "outputs" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def tensorboard_dir(self) -> Path:
        path = self.entry_dir / "tensorboard"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def resolve_path(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.recipe_dir / p).resolve()

    # -- logging -----------------------------------------------------------------------------
    def log(self, message: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        prefix = f"[{stamp}]" if self.world_size == 1 else f"[{stamp} rank {self.world_rank}]"
        line = f"{prefix} {message}"
        self.entry_dir.mkdir(parents=True, exist_ok=True)
        with open(self.entry_dir / "log.txt", "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        if self.echo:
            print(line, file=sys.stderr, flush=True)
        if self.progress_sink is not None and self.world_rank == 0:
            self.progress_sink({"node": self.node, "message": message})

    @contextlib.contextmanager
    def capture_warnings(self) -> Iterator[None]:
        """While a component runs, Python logging warnings (and worse) also go to the node's log: a
        worker's stderr is not shown by `orch run`, and warnings such as trust_remote_code must be seen."""
        handler = _ContextLogHandler(self)
        root = logging.getLogger()
        root.addHandler(handler)
        try:
            yield
        finally:
            root.removeHandler(handler)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.world_rank != 0:
            return
        clean = {k: float(v) for k, v in metrics.items() if _is_number(v)}
        row = {"time": time.time(), "step": step, **clean}
        with open(self.entry_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        writer = self._writer()
        if writer is not None:
            for name, value in clean.items():
                writer.add_scalar(name, value, global_step=step)
            writer.flush()

    def progress(self, step: int, total: int | None = None, **values: float) -> None:
        if self.world_rank != 0 or self.progress_sink is None:
            return
        self.progress_sink({"node": self.node, "step": step, "total": total,
                            **{k: float(v) for k, v in values.items() if _is_number(v)}})

    def set_summary(self, metrics: dict[str, Any]) -> None:
        if self.world_rank != 0:
            return
        path = self.entry_dir / "metrics.json"
        current = json.loads(path.read_text()) if path.exists() else {}
        current.update(metrics)
        path.write_text(json.dumps(current, indent=2, ensure_ascii=False, default=str))

    # -- training ----------------------------------------------------------------------------
    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None = None) -> None:
        if self.report_fn is not None:
            self.report_fn(metrics, checkpoint_dir)

    def latest_checkpoint(self) -> Path | None:
        return self.checkpoint_fn() if self.checkpoint_fn is not None else None

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def _writer(self):
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # pragma: no cover - torch is a dependency
                return None
            self._tb = SummaryWriter(log_dir=str(self.tensorboard_dir()))
        return self._tb

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_tb"] = None
        return state


class _ContextLogHandler(logging.Handler):
    def __init__(self, ctx: NodeContext) -> None:
        super().__init__(logging.WARNING)
        self.ctx = ctx
        self.busy = False  # a warning raised while logging one is dropped, not looped on

    def emit(self, record: logging.LogRecord) -> None:
        if self.busy:
            return
        self.busy = True
        try:
            self.ctx.log(f"{record.levelname.lower()} ({record.name}): {record.getMessage()}")
        except Exception:  # logging must never break the component
            pass
        finally:
            self.busy = False


def _is_number(v: Any) -> bool:
    try:
        return not math.isnan(float(v))
    except (TypeError, ValueError):
        return False
