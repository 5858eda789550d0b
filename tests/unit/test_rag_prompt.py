"""The generator's RAG prompt (components/rag_prompt.py): built by data_prep, carried by the adapter,
read back by evaluate and serving; the passage window it may apply (components/passage_window.py)."""

from __future__ import annotations

import json
from pathlib import Path

from components.data_prep import DataPrepParams, data_prep
from components.data_prep.params import DEFAULT_SFT_INPUT_TEMPLATE, DEFAULT_SFT_INSTRUCTION
from components.evaluate import GenerationParams, rag_prompt_for
from components.passage_window import best_window, text_window
from components.rag_prompt import PROMPT_FILE, RagPrompt
from orchestrator.context import NodeContext

REPO = Path(__file__).resolve().parents[2]

LONG = ("天气预报说明天多云。" * 8) + "《战国无双3》由光荣与ω-Force合作开发。" + ("这款游戏很受欢迎。" * 8)
QUERY = "《战国无双3》是由哪两个公司合作开发的？"


def test_without_a_window_the_prompt_is_the_instruction_and_the_template():
    docs = [{"title": "T1", "text": "甲文"}, {"title": "T2", "text": "乙文"}]
    expected = DEFAULT_SFT_INSTRUCTION + "\n" + DEFAULT_SFT_INPUT_TEMPLATE.format(query="问？", passage="甲文\n\n乙文",
                                                                                   title="T1")
    assert RagPrompt().user_message("问？", docs) == expected
    assert RagPrompt(input_template="{title}|{passage}|{query}").input("q", docs) == "T1|甲文\n\n乙文|q"
    assert RagPrompt().input("q", []) == DEFAULT_SFT_INPUT_TEMPLATE.format(query="q", passage="", title="")


def test_the_window_keeps_the_part_of_the_passage_the_question_is_about():
    prompt = RagPrompt(passage_window=24)
    got = prompt.input(QUERY, [{"title": "战国无双3", "text": LONG}])
    assert "光荣" in got and "天气预报" not in got and "受欢迎" not in got
    assert len(prompt.passage(QUERY, LONG)) == 24
    assert prompt.passage(QUERY, "短文") == "短文"  # a text that fits is kept whole


def test_text_window_and_best_window_agree():
    window = text_window(QUERY, LONG, 24)
    assert "战国无双3" in window
    assert best_window(QUERY, "标题\n" + LONG, 24) == "标题\n" + window
    assert best_window(QUERY, LONG, 24) == window  # no title line: the whole passage is text
    text_with_newline = LONG[:40] + "\n" + LONG[40:]
    assert len(text_window(QUERY, text_with_newline, 24)) == 24  # text_window never splits off a title


def test_save_and_load(tmp_path):
    assert RagPrompt.load(tmp_path) is None
    prompt = RagPrompt("答题。", "{passage}\n{query}", 96)
    prompt.save(tmp_path)
    assert RagPrompt.load(tmp_path) == prompt
    assert json.loads((tmp_path / PROMPT_FILE).read_text(encoding="utf-8"))["passage_window"] == 96


def test_evaluate_uses_the_adapters_prompt_unless_told_otherwise(tmp_path):
    saved = RagPrompt("答题。", "{passage}|{query}", 96)
    saved.save(tmp_path)
    assert rag_prompt_for(GenerationParams(), tmp_path) == saved
    assert rag_prompt_for(GenerationParams(passage_window=0), tmp_path).passage_window is None  # 0: whole passage
    assert rag_prompt_for(GenerationParams(passage_window=40), tmp_path).passage_window == 40
    assert rag_prompt_for(GenerationParams(instruction="别的。"), tmp_path) == RagPrompt("别的。", "{passage}|{query}", 96)
    assert rag_prompt_for(GenerationParams(), tmp_path / "no_prompt") == RagPrompt()  # an adapter without one


def test_data_prep_windows_the_sft_passages_and_saves_the_prompt(tmp_path):
    def prep(**sft) -> tuple[list[dict], Path]:
        entry = tmp_path / f"entry{len(sft)}"
        ctx = NodeContext(node="prep", entry_dir=entry, recipe_dir=REPO / "recipes", seed=13)
        data_prep(DataPrepParams(source="data/cmrc2018_sample.json", format="squad",
                                 split={"by": "passage", "dev": 0.1, "test": 0.3}, **sft), {}, ctx)
        out = entry / "outputs"
        return [json.loads(line) for line in (out / "train_sft" / "sft.jsonl").open(encoding="utf-8")], out

    whole, out = prep()
    assert RagPrompt.load(out / "train_sft") == RagPrompt.load(out / "dev_sft") == RagPrompt()
    windowed, out = prep(sft_passage_window=96)
    assert RagPrompt.load(out / "train_sft") == RagPrompt(passage_window=96)
    assert len(whole) == len(windowed) == 332
    assert [r["output"] for r in whole] == [r["output"] for r in windowed]
    assert sum(len(r["input"]) for r in windowed) < 0.4 * sum(len(r["input"]) for r in whole)
    # the window is chosen by the question alone, and still holds the answer for most of them
    kept = sum(r["output"] in r["input"] for r in windowed) / len(windowed)
    assert kept > 0.7, kept
