"""report.json / report.md / report.html of an evaluation: tables, deltas, targets, sample answers, plots.

The HTML is self-contained (plots embedded as data URIs), so it can be mailed or attached to a ticket.
Standard library only.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

HEADLINE = ("recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10", "map@10", "precision@5")


def _cols(report: dict[str, Any]) -> list[str]:
    have = set(report["retrieval"][0]) if report["retrieval"] else set()
    cols = [c for c in HEADLINE if c in have]
    return cols or sorted(k for k in have if "@" in k)[:6]


def retrieval_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    cols = _cols(report)
    deltas = [c for c in ("recall@10", "ndcg@10") if c in cols] or cols[:1]
    head = ["system"] + cols + [f"Δ{c}" for c in deltas]
    body = []
    for r in report["retrieval"]:
        mark = " ★" if r["system"] == report["best"] else (" (baseline)" if r["system"] == report["baseline"] else "")
        body.append([r["system"] + mark] + [f"{r[c]:.3f}" for c in cols]
                    + [f"{r.get('delta', {}).get(c, 0.0):+.3f}" for c in deltas])
    return head, body


def _md_table(head: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def to_markdown(report: dict[str, Any], title: str) -> str:
    ts = report["test_set"]
    out = [f"# {title}", "",
           f"Held-out test set: {ts['queries']} queries over {ts['passages']} passages. "
           f"Best system: **{report['best']}**; deltas against **{report['baseline']}**.", "",
           "## Retrieval", "", _md_table(*retrieval_table(report)), ""]
    if report.get("targets"):
        out += ["## Targets", "", _md_table(["metric", "target", "system", "value", ""],
                                            [[t["metric"], f"{t['target']:.2f}", t["system"],
                                              "-" if t["value"] is None else f"{t['value']:.3f}",
                                              "met" if t["met"] else "MISSED"] for t in report["targets"]]), ""]
    if report.get("latency_ms"):
        stages = sorted({s for v in report["latency_ms"].values() for s in v})
        out += ["## Latency per query (one query at a time)", "",
                _md_table(["system"] + stages, [[name] + [f"{v[s]:.1f} ms" if s in v else "" for s in stages]
                                                for name, v in report["latency_ms"].items()]), ""]
    gen = report.get("generation")
    if gen and gen.get("rows"):
        out += ["## Answers (retrieve, then generate)", "",
                f"Passages retrieved by {gen['retriever']}; {_prompt_note(gen.get('prompt'))}.", "",
                _md_table(["generator", "exact match", "token F1", "queries", "ms / answer"],
                          [[g["generator"], f"{g['em']:.3f}", f"{g['f1']:.3f}", str(g["queries"]),
                            f"{g['ms_per_answer']:.0f}"] for g in gen["rows"]]), "", "### Sample answers", ""]
        names = [g["generator"] for g in gen["rows"]]
        for s in gen["samples"][:5]:
            out.append(f"- **{s['query']}** — reference: {s['reference']}")
            for n in names:
                out.append(f"  - {n}: {s.get(n, '')!s}")
        out.append("")
    if report.get("training"):
        out += ["## Training", "", _md_table(
            ["node", "steps", "first loss", "final loss", "dev (last eval)"],
            [[n, str(t.get("steps", "")), f"{t.get('first_loss', 0):.4f}", f"{t.get('final_loss', 0):.4f}",
              ", ".join(f"{k}={v:.3f}" for k, v in t.items() if "@" in k)] for n, t in report["training"].items()]),
            ""]
    if report.get("plots"):
        out += ["## Plots", ""] + [f"![{p}]({p})" for p in report["plots"]] + [""]
    return "\n".join(out)


def to_html(report: dict[str, Any], title: str, folder: Path) -> str:
    def table(head, body):
        h = "".join(f"<th>{html.escape(c)}</th>" for c in head)
        rows = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in body)
        return f"<table><thead><tr>{h}</tr></thead><tbody>{rows}</tbody></table>"

    md_sections = []
    ts = report["test_set"]
    md_sections.append(f"<p>Held-out test set: {ts['queries']} queries over {ts['passages']} passages. Best system: "
                       f"<b>{html.escape(report['best'])}</b>; deltas against <b>{html.escape(report['baseline'])}</b>.</p>")
    md_sections.append("<h2>Retrieval</h2>" + table(*retrieval_table(report)))
    if report.get("targets"):
        md_sections.append("<h2>Targets</h2>" + table(
            ["metric", "target", "system", "value", ""],
            [[t["metric"], f"{t['target']:.2f}", t["system"], "-" if t["value"] is None else f"{t['value']:.3f}",
              "✔ met" if t["met"] else "✘ missed"] for t in report["targets"]]))
    if report.get("latency_ms"):
        stages = sorted({s for v in report["latency_ms"].values() for s in v})
        md_sections.append("<h2>Latency per query</h2>" + table(
            ["system"] + stages, [[n] + [f"{v[s]:.1f} ms" if s in v else "" for s in stages]
                                  for n, v in report["latency_ms"].items()]))
    gen = report.get("generation")
    if gen and gen.get("rows"):
        names = [g["generator"] for g in gen["rows"]]
        md_sections.append(f"<h2>Answers</h2><p>Passages retrieved by {html.escape(gen.get('retriever', ''))}; "
                           f"{html.escape(_prompt_note(gen.get('prompt')))}.</p>" + table(
            ["generator", "exact match", "token F1", "queries"],
            [[g["generator"], f"{g['em']:.3f}", f"{g['f1']:.3f}", g["queries"]] for g in gen["rows"]]))
        md_sections.append(table(["query", "reference"] + names,
                                 [[s["query"], s["reference"]] + [s.get(n, "") for n in names]
                                  for s in gen["samples"][:10]]))
    for p in report.get("plots", []):
        data = base64.b64encode((folder / p).read_bytes()).decode()
        md_sections.append(f"<h3>{html.escape(p)}</h3><img alt='{html.escape(p)}' src='data:image/png;base64,{data}'>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;"
             "font-size:13px;text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{''.join(md_sections)}</body></html>")


def tables(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Plain tables (title, columns, rows of strings) that `orch show` / `orch compare` print without knowing ML."""
    out = []
    cols = [c for c in ("recall@1", "recall@5", "recall@10", "mrr@10", "ndcg@10") if c in report["retrieval"][0]]
    body = []
    for r in report["retrieval"]:
        mark = " *" if r["system"] == report["best"] else (" (baseline)" if r["system"] == report["baseline"] else "")
        body.append([r["system"] + mark] + [f"{r[c]:.3f}" for c in cols]
                    + [f"{r.get('delta', {}).get('ndcg@10', 0.0):+.3f}"])
    out.append({"title": f"retrieval on {report['test_set']['queries']} held-out queries (* best)",
                "columns": ["system"] + [c.replace("recall", "R").replace("ndcg", "nDCG").replace("mrr", "MRR")
                                         for c in cols] + ["ΔnDCG@10"], "rows": body})
    if report.get("targets"):
        out.append({"title": "targets", "columns": ["metric", "target", "system", "value", ""],
                    "rows": [[t["metric"], f"{t['target']:.2f}", t["system"],
                              "-" if t["value"] is None else f"{t['value']:.3f}", "met" if t["met"] else "MISSED"]
                             for t in report["targets"]]})
    gen = report.get("generation")
    if gen and gen.get("rows"):
        out.append({"title": "answers (retrieve, then generate)", "columns": ["generator", "exact match", "token F1"],
                    "rows": [[g["generator"], f"{g['em']:.3f}", f"{g['f1']:.3f}"] for g in gen["rows"]]})
    return out


def write_report(folder: Path, report: dict[str, Any], title: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    report = {**report, "tables": tables(report)}
    (folder / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    (folder / "report.md").write_text(to_markdown(report, title), encoding="utf-8")
    (folder / "report.html").write_text(to_html(report, title, folder), encoding="utf-8")


def _prompt_note(prompt: dict | None) -> str:
    """How the retrieved passages entered the generator's prompt."""
    window = (prompt or {}).get("passage_window")
    return (f"each passage cut to the {window} characters matching the question, as in training" if window
            else "whole passages in the prompt")
