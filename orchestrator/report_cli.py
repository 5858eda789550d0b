"""Terminal output of the CLI: plans, run summaries, run listings, node details."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from .execute.progress import escape, styled
from .store import Store, read_json

ACTION_STYLE = {"cached": "dim green", "run": "bold yellow", "skip": "dim"}


def print_plan(console, plan) -> None:
    r = plan.recipe
    console.print(f"[bold]{r.name}[/]  ({r.loaded.file}" + (f", profile {r.loaded.profile}" if r.loaded.profile else "")
                  + ")")
    for depth, layer in enumerate(plan.layers):
        console.print(f"[bold]layer {depth}[/]")
        for name in layer:
            p = plan.nodes[name]
            node = r.graph.nodes[name]
            ins = ", ".join(f"{k}<-{'+'.join(map(str, v))}" for k, v in node.inputs.items())
            res = node.resources
            where = (f"{res.workers}x(cpu {res.cpus_per_worker:g}, gpu {res.gpus_per_worker:g})" if node.is_training
                     else f"cpu {res.cpus:g}, gpu {res.gpus:g}")
            label = {"run": "to run", "cached": "cached", "skip": "skip"}[p.action]
            why = "" if p.action == "cached" else f": {escape(p.reason)}"
            console.print(f"  [{ACTION_STYLE[p.action]}]{label:7}[/] {name} [dim]({p.kind}, {where}"
                          + (", sweep" if node.sweep is not None else "") + f", key {p.key[:12]})[/]{why}")
            if ins:
                console.print(f"           [dim]inputs: {escape(ins)}[/]")
            if p.estimate:
                console.print("           [dim]estimate: " + escape(_format_estimate(p.estimate)) + "[/]")
    n_run = len(plan.to_run)
    n_cached = sum(1 for n in plan.nodes.values() if n.action == "cached")
    console.print(f"{n_run} to run, {n_cached} cached")


def _format_estimate(est: dict[str, Any]) -> str:
    parts = []
    for k, v in est.items():
        parts.append(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}")
    return ", ".join(parts)


def print_run_summary(console, plan, result, elapsed: float, resume_cmd: str) -> None:
    table = Table(title=f"run {plan.recipe.name}/{result.run_id}", box=None, header_style="bold")
    for col in ("node", "kind", "state", "time", "note"):
        table.add_column(col)
    for layer in plan.layers:
        for name in layer:
            o = result.outcomes.get(name)
            state = o.state if o else "?"
            took = f"{o.ended - o.started:.1f}s" if o and o.started and o.ended else ""
            note = (o.error or "") if o else ""
            style = {"done": "green", "cached": "dim green", "failed": "bold red", "skipped": "magenta"}.get(state, "")
            table.add_row(name, plan.nodes[name].kind, styled(state, style), took, escape(note[:100]))
    console.print(table)
    for name in plan.to_run:
        o = result.outcomes.get(name)
        if o and o.state == "done":
            p = plan.nodes[name]
            print_sweep(console, name, Store(result.run_dir.parent.parent).entry_dir(p.kind, p.key))
    failed = [n for n, o in result.outcomes.items() if o.state == "failed"]
    for name in failed:
        o = result.outcomes[name]
        console.print(f"[bold red]failed[/] {escape(name)}: {escape(o.error or '')}\n  log: {escape(str(o.log))}")
    if failed or result.interrupted:
        console.print(f"fix the cause, then resume (finished nodes are reused):\n  {escape(resume_cmd)}")
    verdict = "interrupted" if result.interrupted else ("ok" if result.ok else "failed")
    console.print(f"{verdict} in {elapsed:.1f}s — run folder {result.run_dir}"
                  + ("" if plan.to_run else " (everything cached; Ray not started)"))


def print_sweep(console, name: str, entry: Path) -> None:
    """The trial table of a swept node (trial, params, metric, iterations, stopped early?)."""
    sweep = read_json(entry / "sweep.json")
    if not sweep:
        return
    table = Table(title=f"sweep {name}: {sweep['metric']} ({sweep['mode']})", box=None, header_style="bold")
    for col in ("trial", sweep["metric"], "iters", "state", "params"):
        table.add_column(col)
    for t in sweep["trials"]:
        state = "finished" if t["finished"] else ("stopped early" if t["stopped_early"] else ("error" if t["error"] else "-"))
        best = t["trial"] == sweep["best"]["trial"]
        metric = "-" if t["metric"] is None else f"{t['metric']:.4f}"
        table.add_row(styled(t["trial"] + (" *" if best else ""), "bold green" if best else ""), metric,
                      str(t["iterations"]), state, escape(json.dumps(t["params"], ensure_ascii=False)))
    console.print(table)


def print_runs(console, store, limit: int) -> None:
    runs = store.runs()[-limit:]
    if not runs:
        console.print(f"no runs under {store.root}")
        return
    table = Table(box=None, header_style="bold")
    for col in ("run", "state", "nodes", "updated"):
        table.add_column(col)
    for run_dir in runs:
        st = read_json(run_dir / "status.json", {}) or {}
        nodes = st.get("nodes") or {}
        counts: dict[str, int] = {}
        for n in nodes.values():
            counts[n.get("state", "?")] = counts.get(n.get("state", "?"), 0) + 1
        table.add_row(f"{run_dir.parent.name}/{run_dir.name}", st.get("state", "?"),
                      ", ".join(f"{v} {k}" for k, v in sorted(counts.items())),
                      time.strftime("%Y-%m-%d %H:%M", time.localtime(st.get("updated", 0))))
    console.print(table)


def print_status(console, run_dir: Path) -> None:
    st = read_json(run_dir / "status.json", {}) or {}
    console.print(f"[bold]{run_dir.parent.name}/{run_dir.name}[/]: {st.get('state', '?')}  ({run_dir})")
    table = Table(box=None, header_style="bold")
    for col in ("node", "kind", "state", "time", "reason / error"):
        table.add_column(col)
    for name, n in (st.get("nodes") or {}).items():
        took = f"{n['ended'] - n['started']:.1f}s" if n.get("started") and n.get("ended") else ""
        table.add_row(name, n.get("kind", ""), n.get("state", ""), took, escape(n.get("error") or n.get("reason") or ""))
    console.print(table)


def _node_entry(run_dir: Path, node: str) -> Path | None:
    info = read_json(run_dir / node / "node.json")
    return Path(info["entry"]) if info else None


def print_show(console, run_dir: Path) -> None:
    print_status(console, run_dir)
    st = read_json(run_dir / "status.json", {}) or {}
    for name in st.get("nodes") or {}:
        entry = _node_entry(run_dir, name)
        summary = read_json(entry / "metrics.json", {}) if entry else {}
        if summary:
            console.print(f"[bold]{name}[/] " + _flat_metrics(summary))
    report = run_dir / "report" / "report.md"
    if report.exists():
        console.print(f"report: {report}")


def _flat_metrics(summary: dict[str, Any], limit: int = 12) -> str:
    items = []
    for k, v in summary.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            items.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    more = f" (+{len(items) - limit} more: orch show RUN NODE)" if len(items) > limit else ""
    return " ".join(items[:limit]) + more


def print_node(console, run_dir: Path, node: str) -> None:
    entry = _node_entry(run_dir, node)
    if entry is None:
        from .recipe.errors import did_you_mean

        names = [p.name for p in run_dir.iterdir() if (p / "node.json").exists()]
        console.print(f"no node '{node}' in run {run_dir.name}{did_you_mean(node, names)}")
        return
    manifest = read_json(entry / "manifest.json")
    console.print(f"[bold]{node}[/]  entry {entry}  " + ("complete" if manifest else "[red]incomplete[/]"))
    if manifest:
        for name, out in manifest.get("outputs", {}).items():
            console.print(f"  output {name} ({out['kind']}): {entry / out['path']}")
        console.print(f"  took {manifest.get('duration_s', 0):.1f}s")
    print_sweep(console, node, entry)
    summary = read_json(entry / "metrics.json", {}) or {}
    if summary:
        console.print("  metrics:")
        console.print_json(json.dumps(summary, ensure_ascii=False, default=str))
    for name in ("log.txt", "metrics.jsonl", "tensorboard"):
        if (entry / name).exists():
            console.print(f"  {name}: {entry / name}")


def print_components(console) -> None:
    from .registry import load_registry

    for kind, spec in sorted(load_registry().items()):
        ins = ", ".join(f"{n}: {'|'.join(i.kinds)}{'[]' if i.many else ''}{'?' if i.optional else ''}" for n, i in spec.inputs.items())
        outs = ", ".join(f"{n}: {k}" for n, k in spec.outputs.items())
        console.print(f"[bold]{kind}[/] (v{spec.version}, runs as {spec.runs_as})\n  inputs: {ins or '-'}\n  outputs: {outs}")
