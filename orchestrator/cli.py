"""`orch`: validate, plan and run recipes; inspect runs.

Imports stay light at the top: `orch validate` and `orch plan` never import torch, ray or
transformers and answer in well under a second.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None, pretty_exceptions_enable=False,
                  help="orch: declarative training pipelines for RAG systems, on Ray.")
# Piped or logged output (CI, `| tee`, nohup) gets no terminal width: Rich would assume 80 columns and
# cut the metric tables' numbers to "0.9…". Wide enough for them unless COLUMNS says otherwise.
_WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
console = Console(highlight=False, soft_wrap=True, width=_WIDTH)
err_console = Console(stderr=True, highlight=False, soft_wrap=True, width=_WIDTH)

EXIT_INVALID = 2

ProfileOpt = typer.Option(None, "--profile", "-p", help="Apply a profile defined in the recipe's `profiles:`.")
SetOpt = typer.Option(None, "--set", "-s", help="Override a value: a.b.c=value (repeatable; YAML values).")
StorageOpt = typer.Option(None, "--storage", help="Run store: a path or a bucket URI such as s3://BUCKET/PREFIX "
                                                  "(default: the recipe's `storage:`, else runs/).")
StoreOpt = typer.Option("runs/", "--storage", help="Run store: a path or a bucket URI such as s3://BUCKET/PREFIX.")


def _load(recipe: Path, profile: Optional[str], sets: Optional[list[str]]):
    from .recipe.errors import RecipeError
    from .recipe.validate import load_and_validate

    try:
        return load_and_validate(recipe, profile, list(sets or []))
    except RecipeError as exc:
        err_console.print(exc.format(), markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_INVALID)


def _store(storage: Optional[str], recipe=None):
    from .store import Store

    root = storage or (recipe.spec.storage if recipe is not None else "runs/")
    try:
        return Store.at(root)
    except ValueError as exc:
        err_console.print(f"error: {exc}")
        raise typer.Exit(EXIT_INVALID)


def _plan(recipe, store, force=None, only=None):
    from .plan import make_plan

    try:
        return make_plan(recipe, store, force=list(force or []), only=list(only or []))
    except KeyError as exc:
        err_console.print(f"error: {exc.args[0]}")
        raise typer.Exit(EXIT_INVALID)


@app.command()
def validate(recipe: Path = typer.Argument(..., help="Recipe YAML file."),
             profile: Optional[str] = ProfileOpt, set_: Optional[list[str]] = SetOpt) -> None:
    """Check a recipe: schema, params of every component, graph, data files. Exit 2 on errors."""
    r = _load(recipe, profile, set_)
    n = len(r.graph.nodes)
    console.print(f"{recipe}: ok ({n} node{'s' if n != 1 else ''}, {len(r.graph.layers())} layers)")


@app.command()
def plan(recipe: Path = typer.Argument(..., help="Recipe YAML file."),
         profile: Optional[str] = ProfileOpt, set_: Optional[list[str]] = SetOpt,
         storage: Optional[str] = StorageOpt,
         force: Optional[list[str]] = typer.Option(None, "--force", help="Plan NODE (and its descendants) to re-run."),
         only: Optional[list[str]] = typer.Option(None, "--only", help="Plan only NODE and what it needs."),
         as_json: bool = typer.Option(False, "--json", help="Print the plan as JSON.")) -> None:
    """Show the graph in layers: each node cached or to run, and why."""
    r = _load(recipe, profile, set_)
    p = _plan(r, _store(storage, r), force, only)
    if as_json:
        console.print_json(json.dumps(p.to_json()))
        return
    from .report_cli import print_plan

    print_plan(console, p)


@app.command()
def run(recipe: Path = typer.Argument(..., help="Recipe YAML file."),
        profile: Optional[str] = ProfileOpt, set_: Optional[list[str]] = SetOpt,
        storage: Optional[str] = StorageOpt,
        address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray started for this run)."),
        only: Optional[list[str]] = typer.Option(None, "--only", help="Run only NODE and the nodes it needs (repeatable)."),
        force: Optional[list[str]] = typer.Option(None, "--force", help="Re-run NODE and its descendants from scratch (checkpoints discarded), even if cached (repeatable).")) -> None:
    """Validate, plan and run a recipe on Ray. Completed nodes are reused; a re-run resumes."""
    from .execute.progress import RunView
    from .execute.scheduler import Scheduler
    from .report_cli import print_run_summary

    started = time.time()
    r = _load(recipe, profile, set_)
    store = _store(storage, r)
    p = _plan(r, store, force, only)
    run_id, run_dir = store.new_run(r.name)
    _write_run_files(r, p, run_dir)
    store.push(run_dir / "recipe.resolved.yaml", run_dir / "plan.json")
    to_run = p.to_run
    console.print(f"run {r.name}/{run_id}: {len(to_run)} to run, "
                  f"{sum(1 for n in p.nodes.values() if n.action == 'cached')} cached  ({run_dir})")
    order = [n for layer in p.layers for n in layer]
    sched = Scheduler(p, store, run_id, run_dir, console, address=address)
    from .execute.scheduler import StorageNotShared

    try:
        with RunView(console, order, {n: p.nodes[n].kind for n in order}) as view:
            result = sched.run(view)
    except StorageNotShared as exc:
        err_console.print(f"error: {exc}")
        raise typer.Exit(EXIT_INVALID)
    resume = "orch run " + " ".join(shlex.quote(a) for a in _resume_args(recipe, profile, set_, storage, address))
    print_run_summary(console, p, result, time.time() - started, resume)
    if result.interrupted:
        raise typer.Exit(130)
    if not result.ok:
        raise typer.Exit(1)


def _resume_args(recipe, profile, sets, storage, address) -> list[str]:
    args = [str(recipe)]
    if profile:
        args += ["--profile", profile]
    for s in sets or []:
        args += ["--set", s]
    if storage:
        args += ["--storage", storage]
    if address:
        args += ["--address", address]
    return args


def _write_run_files(r, p, run_dir: Path) -> None:
    from ruamel.yaml import YAML

    from .store import write_json_atomic

    y = YAML(typ="safe")
    y.default_flow_style = False
    with open(run_dir / "recipe.resolved.yaml", "w", encoding="utf-8") as fh:
        fh.write(f"# {r.loaded.file}" + (f" --profile {r.loaded.profile}" if r.loaded.profile else "")
                 + "".join(f" --set {s}" for s in r.loaded.overrides) + "\n")
        y.dump(r.loaded.data, fh)
    write_json_atomic(run_dir / "plan.json", p.to_json())


@app.command("ls")
def list_runs(storage: str = StoreOpt,
              limit: int = typer.Option(20, "--limit", "-n", help="Show the N most recent runs.")) -> None:
    """List runs, most recent last."""
    from .report_cli import print_runs

    print_runs(console, _store(storage), limit)


@app.command()
def status(run_ref: Optional[str] = typer.Argument(None, metavar="[RUN]", help="Run id, recipe/run-id, or recipe name (latest)."),
           storage: str = StoreOpt) -> None:
    """Node states of a run (the latest by default)."""
    from .report_cli import print_status

    print_status(console, _find_run(storage, run_ref))


@app.command()
def show(run_ref: str = typer.Argument(..., metavar="RUN", help="Run id, recipe/run-id, or recipe name (latest)."),
         node: Optional[str] = typer.Argument(None, help="A node of the run: its metrics, artifacts and paths."),
         storage: str = StoreOpt) -> None:
    """Metrics, artifacts and paths of a run or of one of its nodes."""
    from .report_cli import print_node, print_show

    run_dir = _find_run(storage, run_ref, entries=True)
    if node:
        print_node(console, run_dir, node)
    else:
        print_show(console, run_dir)


@app.command()
def compare(run_a: str = typer.Argument(..., metavar="RUN_A", help="Run id, recipe/run-id, or recipe name (latest)."),
            run_b: str = typer.Argument(..., metavar="RUN_B", help="The run to compare it with."),
            storage: str = StoreOpt) -> None:
    """Two runs side by side: which nodes differ, their metrics and published tables (A -> B)."""
    from .report_cli import print_compare

    print_compare(console, _find_run(storage, run_a, entries=True), _find_run(storage, run_b, entries=True))


@app.command()
def query(run_ref: str = typer.Argument(..., metavar="RUN", help="Run id, recipe/run-id, or recipe name (latest)."),
          text: str = typer.Argument(..., help="The question."),
          k: int = typer.Option(5, "-k", help="Passages to show."),
          candidates: int = typer.Option(20, "--candidates", help="Dense candidates the reranker reorders."),
          answer: bool = typer.Option(True, "--answer/--no-answer", help="Also answer with the run's tuned LLM."),
          storage: str = StoreOpt) -> None:
    """Ask a finished run: embedder recall -> reranker -> (LoRA-tuned) answer, with per-stage latency."""
    from rich.table import Table

    from components.serving import RagPipeline  # the built-in serving library (a component-side API)
    from .execute.progress import escape

    run_dir = _find_run(storage, run_ref, entries=True)
    try:
        rag = RagPipeline.from_run(run_dir)
    except LookupError as exc:
        err_console.print(f"error: {exc}")
        raise typer.Exit(1)
    hits = rag.search(text, k=k, candidates=candidates)
    table = Table(box=None, header_style="bold", title=f"{run_dir.parent.name}/{run_dir.name}", title_justify="left")
    for col in ("#", "rerank", "dense", "passage"):
        table.add_column(col, justify="left" if col == "passage" else "right")
    for h in hits:
        snippet = (f"【{h.title}】" if h.title else "") + h.text.replace("\n", " ")
        table.add_row(str(h.rank), "-" if h.rerank_score is None else f"{h.rerank_score:.3f}", f"{h.dense_score:.3f}",
                      escape(snippet[:110] + ("…" if len(snippet) > 110 else "")))
    console.print(table)
    t = rag.timings
    console.print(f"[dim]encode {t.encode_ms:.0f} ms, search {t.search_ms:.1f} ms"
                  + (f", rerank {t.rerank_ms:.0f} ms ({candidates} candidates)" if rag.reranker else "") + "[/]")
    if answer and rag.adapter is not None:
        reply = rag.answer(text, hits)
        console.print(f"[bold]answer:[/] {escape(reply)}  [dim]({rag.timings.generate_ms:.0f} ms)[/]")


@app.command()
def tensorboard(run_ref: Optional[str] = typer.Argument(None, metavar="[RUN]", help="Run (latest by default)."),
                storage: str = StoreOpt,
                port: int = typer.Option(6006, "--port"), host: str = typer.Option("127.0.0.1", "--host"),
                dry_run: bool = typer.Option(False, "--dry-run", help="Print the command instead of starting it.")) -> None:
    """Serve the run's TensorBoard logs (every node, every trial) and print the URL."""
    import subprocess

    from .store import node_entry, read_json

    run_dir = _find_run(storage, run_ref, entries=True)
    status_ = read_json(run_dir / "status.json", {})
    specs = []
    for name in status_.get("nodes") or {}:
        entry = node_entry(run_dir, name)
        if entry is None:
            continue
        if (entry / "tensorboard").is_dir():
            specs.append(f"{name}:{entry / 'tensorboard'}")
        for trial_tb in sorted(entry.glob("trials/*/tensorboard")):  # a sweep's trials, one run each
            specs.append(f"{name}/{trial_tb.parent.name}:{trial_tb}")
    if not specs:
        err_console.print(f"no TensorBoard logs in run {run_dir.name} (only training and evaluation nodes write them)")
        raise typer.Exit(1)
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir_spec", ",".join(specs), "--host", host, "--port", str(port)]
    console.print(f"TensorBoard for {run_dir.parent.name}/{run_dir.name}: http://{host}:{port}/")
    if dry_run:
        console.print(" ".join(shlex.quote(c) for c in cmd))
        return
    try:
        subprocess.run(cmd, check=False)
    except KeyboardInterrupt:
        pass


@app.command()
def schema(output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write to FILE instead of stdout.")) -> None:
    """Write the JSON Schema of recipes (for editor completion, e.g. yaml-language-server)."""
    from .recipe.json_schema import recipe_json_schema

    text = json.dumps(recipe_json_schema(), indent=2, ensure_ascii=False)
    if output:
        output.write_text(text + "\n", encoding="utf-8")
        console.print(f"wrote {output}")
    else:
        sys.stdout.write(text + "\n")


@app.command()
def reference(write: Optional[Path] = typer.Option(None, "--write", help="Update the reference section of this README.")) -> None:
    """Print (or write into the README) the reference of every component's parameters."""
    from .reference import render_reference, update_readme
    from .registry import load_registry

    text = render_reference(load_registry())
    if write:
        write.write_text(update_readme(write.read_text(encoding="utf-8"), text), encoding="utf-8")
        console.print(f"updated {write}")
    else:
        sys.stdout.write(text + "\n")


@app.command()
def components() -> None:
    """List the component kinds this installation knows, with their inputs and outputs."""
    from .report_cli import print_components

    print_components(console)


def _find_run(storage: str, ref: Optional[str], entries: bool = False) -> Path:
    store = _store(storage)
    try:
        return store.find_run(ref, entries=entries)
    except LookupError as exc:
        err_console.print(f"error: {exc}")
        raise typer.Exit(1)


def main() -> None:  # pragma: no cover - console script entry
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
