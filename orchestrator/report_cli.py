"""Terminal output of the CLI: plans, run summaries, run listings, node details."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.table import Table

from .execute.progress import escape, styled
from .store import Store, node_entry, read_json

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
    store = Store(result.run_dir.parent.parent)
    for layer in plan.layers:
        for name in layer:
            o = result.outcomes.get(name)
            if o and o.state in ("done", "cached"):
                p = plan.nodes[name]
                print_tables(console, name, store.entry_dir(p.kind, p.key))
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
    return node_entry(run_dir, node)


def print_show(console, run_dir: Path) -> None:
    print_status(console, run_dir)
    st = read_json(run_dir / "status.json", {}) or {}
    for name in st.get("nodes") or {}:
        entry = _node_entry(run_dir, name)
        summary = read_json(entry / "metrics.json", {}) if entry else {}
        if summary:
            console.print(f"[bold]{name}[/] " + _flat_metrics(summary))
    for name in st.get("nodes") or {}:
        entry = _node_entry(run_dir, name)
        if entry is not None:
            print_tables(console, name, entry)


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


# ---------------------------------------------------------------------------------------------
# Tables a component publishes (outputs/*/report.json "tables": [{title, columns, rows}])
# ---------------------------------------------------------------------------------------------


def node_tables(entry: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The plain tables a node's outputs publish, with the report folder they come from."""
    found = []
    outputs = entry / "outputs"
    if not (entry / "manifest.json").exists() or not outputs.is_dir():
        return found
    for report in sorted(outputs.glob("*/report.json")):
        data = read_json(report, {}) or {}
        for t in data.get("tables") or []:
            if isinstance(t, dict) and t.get("columns") and isinstance(t.get("rows"), list):
                found.append((report.parent, t))
    return found


def print_tables(console, node: str, entry: Path) -> None:
    shown: set[Path] = set()
    for folder, t in node_tables(entry):
        table = Table(title=f"{node}: {t.get('title', '')}", box=None, header_style="bold", title_justify="left")
        for i, col in enumerate(t["columns"]):
            table.add_column(escape(str(col)), justify="left" if i == 0 else "right", no_wrap=True)
        for row in t["rows"]:
            table.add_row(*[escape(str(c)) for c in row])
        console.print(table)
        shown.add(folder)
    for folder in sorted(shown):
        files = [f.name for f in sorted(folder.iterdir()) if f.suffix in (".md", ".html", ".png")]
        console.print(f"[dim]{node} report: {folder}  ({', '.join(files)})[/]")


def print_compare(console, run_a: Path, run_b: Path) -> None:
    """Two runs side by side: which nodes differ (cache key), their summary metrics, their published tables."""
    st_a = read_json(run_a / "status.json", {}) or {}
    st_b = read_json(run_b / "status.json", {}) or {}
    label_a, label_b = f"{run_a.parent.name}/{run_a.name}", f"{run_b.parent.name}/{run_b.name}"
    console.print(f"[bold]A[/] {label_a}   [bold]B[/] {label_b}")
    nodes = list(dict.fromkeys(list(st_a.get("nodes") or {}) + list(st_b.get("nodes") or {})))
    table = Table(title="nodes", box=None, header_style="bold", title_justify="left")
    for col in ("node", "A", "B", ""):
        table.add_column(col)
    entries = {}
    for name in nodes:
        ea, eb = _node_entry(run_a, name), _node_entry(run_b, name)
        entries[name] = (ea, eb)
        same = ea is not None and ea == eb
        table.add_row(name, (st_a.get("nodes") or {}).get(name, {}).get("state", "-"),
                      (st_b.get("nodes") or {}).get(name, {}).get("state", "-"),
                      "same result (same cache key)" if same else ("only in one run" if ea is None or eb is None
                                                                   else "different"))
    console.print(table)
    for name, (ea, eb) in entries.items():
        if ea is None or eb is None or ea == eb:
            continue
        ma = read_json(ea / "metrics.json", {}) or {}
        mb = read_json(eb / "metrics.json", {}) or {}
        keys = [k for k in dict.fromkeys(list(ma) + list(mb)) if _num(ma.get(k)) or _num(mb.get(k))]
        if keys:
            t = Table(title=f"{name}: metrics", box=None, header_style="bold", title_justify="left")
            for col in ("metric", "A", "B", "B - A"):
                t.add_column(col, justify="left" if col == "metric" else "right")
            for k in keys[:30]:
                a, b = ma.get(k), mb.get(k)
                delta = f"{b - a:+.4g}" if _num(a) and _num(b) else ""
                t.add_row(escape(k), _fmt(a), _fmt(b), delta)
            console.print(t)
        ta = {tb.get("title"): tb for _, tb in node_tables(ea)}
        tb_ = {tb.get("title"): tb for _, tb in node_tables(eb)}
        for title in ta:
            if title not in tb_:
                continue
            a, b = ta[title], tb_[title]
            cols = [c for c in a["columns"][1:] if c in b["columns"]]
            rows_b = {r[0]: r for r in b["rows"]}
            t = Table(title=f"{name}: {title} (A → B)", box=None, header_style="bold", title_justify="left")
            t.add_column(escape(str(a["columns"][0])))
            for c in cols:
                t.add_column(escape(str(c)), justify="right")
            for row in a["rows"]:
                other = rows_b.get(row[0])
                cells = []
                for c in cols:
                    va = row[a["columns"].index(c)]
                    vb = other[b["columns"].index(c)] if other else "-"
                    cells.append(va if va == vb else f"{va} → {vb}")
                t.add_row(escape(str(row[0])), *[escape(x) for x in cells])
            console.print(t)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)
