"""Regenerate the data samples shipped in recipes/data/ from the shared dataset snapshot.

    python recipes/data/make_samples.py [--source-dir ../shared/data] [--check]

Deterministic: every sample is a prefix (or the whole) of its source, taken in file order, so a
run over the same sources writes byte-identical files. The sources are checked against the
sha256 prefixes recorded in ../shared/data/MANIFEST.md before anything is written; --check only
verifies that the shipped files match what would be generated. See README.md for sources and
licences.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parents[2] / "shared" / "data"  # <repo>/../shared/data

CMRC_ARTICLES = 150  # first 150 articles of the dev set: 150 paragraphs, 556 questions
ALPACA_RECORDS = 200  # first 200 records of alpaca_zh_demo
OAAST_RECORDS = 60  # first 60 records of oaast_sft_zh (23 of them multi-turn)

# sha256 prefixes from MANIFEST.md: the samples are only regenerated from the same bytes.
SOURCES = {
    "cmrc2018_dev/cmrc2018_dev.json": "e9ff74231f05c230",
    "alpaca_zh_demo/alpaca_zh_demo.json": "d5a4be46ae70d23a",
    "oaast_sft_zh/oaast_sft_zh.json": "44c6689eb9ee9a1b",
    "covid_faq_en/faq_db.csv": "1a8a130e1b2cab81",
    "covid_faq_en/validation.csv": "70f6066a0f3cfddd",
}


def check_sources(source_dir: Path) -> None:
    for rel, prefix in SOURCES.items():
        path = source_dir / rel
        if not path.is_file():
            sys.exit(f"missing source file {path} (pass --source-dir)")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if not digest.startswith(prefix):
            sys.exit(f"{path}: sha256 {digest[:16]}... differs from the manifest's {prefix}...")


def dumps_json(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, indent=1) + "\n"


def dumps_jsonl(rows) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def cmrc_sample(source_dir: Path) -> dict[str, str]:
    doc = json.loads((source_dir / "cmrc2018_dev/cmrc2018_dev.json").read_text(encoding="utf-8"))
    sample = {"version": doc.get("version", "v1.0"), "data": doc["data"][:CMRC_ARTICLES]}
    return {"cmrc2018_sample.json": dumps_json(sample)}


def alpaca_sample(source_dir: Path) -> dict[str, str]:
    rows = json.loads((source_dir / "alpaca_zh_demo/alpaca_zh_demo.json").read_text(encoding="utf-8"))
    return {"alpaca_zh_sample.json": dumps_json(rows[:ALPACA_RECORDS])}


def oaast_sample(source_dir: Path) -> dict[str, str]:
    rows = json.loads((source_dir / "oaast_sft_zh/oaast_sft_zh.json").read_text(encoding="utf-8"))
    return {"oaast_sft_zh_sample.json": dumps_json(rows[:OAAST_RECORDS])}


def covid_sample(source_dir: Path) -> dict[str, str]:
    """The whole COVID FAQ set as a BEIR folder: FAQ items are the corpus (title = FAQ question,
    text = the cleaned answer), in-domain user questions are queries, their FAQ IDs the qrels.
    Out-of-domain questions (labelled -1) are kept apart in queries_out_of_domain.jsonl."""
    with open(source_dir / "covid_faq_en/faq_db.csv", encoding="utf-8", newline="") as fh:
        faq = list(csv.DictReader(fh))
    with open(source_dir / "covid_faq_en/validation.csv", encoding="utf-8", newline="") as fh:
        questions = list(csv.DictReader(fh))
    corpus = [{"_id": r["ID"].strip(), "title": r["Question"].strip(), "text": r["Answer"].strip()} for r in faq]
    known = {c["_id"] for c in corpus}
    queries, out_of_domain, qrels = [], [], []
    for i, row in enumerate(questions):
        qid = f"q{i}"
        ids = [x.strip() for x in row["Answer"].split(",") if x.strip()]
        record = {"_id": qid, "text": row["Question"].strip()}
        if ids == ["-1"]:
            out_of_domain.append(record)
            continue
        unknown = [x for x in ids if x not in known]
        if unknown:
            sys.exit(f"validation.csv row {i + 2}: unknown FAQ id(s) {unknown}")
        queries.append(record)
        qrels += [f"{qid}\t{x}\t1\n" for x in ids]
    return {
        "covid_faq_sample/corpus.jsonl": dumps_jsonl(corpus),
        "covid_faq_sample/queries.jsonl": dumps_jsonl(queries),
        "covid_faq_sample/qrels.tsv": "query-id\tcorpus-id\tscore\n" + "".join(qrels),
        "covid_faq_sample/queries_out_of_domain.jsonl": dumps_jsonl(out_of_domain),
    }


def build(source_dir: Path) -> dict[str, str]:
    files: dict[str, str] = {}
    for make in (cmrc_sample, alpaca_sample, oaast_sample, covid_sample):
        files.update(make(source_dir))
    return files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source-dir", type=Path, default=DEFAULT_SOURCE, help="the shared data folder")
    ap.add_argument("--check", action="store_true", help="only check that the shipped files are up to date")
    args = ap.parse_args(argv)
    check_sources(args.source_dir)
    files = build(args.source_dir)
    stale = []
    for rel, text in files.items():
        path = HERE / rel
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(rel)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(HERE)} ({len(text.encode('utf-8')):,} bytes)")
    if stale:
        print("out of date: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
