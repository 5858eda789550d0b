"""hard_negative_mining, run in-process on tiny corpora whose right negatives are known."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from components.mining import MiningError, MiningParams, doc_norms, hard_negative_mining, normalize_text
from orchestrator.api import Artifact, read_jsonl
from orchestrator.context import NodeContext

EN_CORPUS = [
    {"_id": "pos", "title": "", "text": "apple pie recipe with cinnamon and butter"},
    {"_id": "dup", "title": "", "text": "Apple  pie recipe with cinnamon and  butter"},  # planted duplicate
    {"_id": "near", "title": "", "text": "apple pie recipe with cinnamon"},  # a likely unlabeled positive
    {"_id": "n1", "title": "", "text": "apple pie recipe from grandma"},
    {"_id": "n2", "title": "", "text": "apple pie in the oven tonight"},
    {"_id": "n3", "title": "", "text": "apple orchards in autumn light"},
    {"_id": "u1", "title": "", "text": "the stock market fell sharply on monday"},
    {"_id": "u2", "title": "", "text": "violins are string instruments played with a bow"},
    {"_id": "u3", "title": "", "text": "mount everest is the highest mountain"},
    {"_id": "u4", "title": "", "text": "python is a programming language"},
    {"_id": "s_pos", "title": "Football", "text": "soccer world cup final in qatar"},
    {"_id": "lonely", "title": "", "text": "zebra xylophone quartz"},
]
EN_PAIRS = [
    {"query": "apple pie recipe with cinnamon", "positive": EN_CORPUS[0]["text"], "query_id": "qa", "positive_id": "pos"},
    {"query": "world cup final soccer", "positive": "soccer world cup final in qatar", "query_id": "qs",
     "positive_id": "s_pos"},
    {"query": "zebra xylophone", "positive": "zebra xylophone quartz", "query_id": "qz", "positive_id": "lonely"},
]

ZH_CORPUS = [
    {"_id": "wall", "title": "长城", "text": "长城是中国古代的军事防御工程，修筑历史可上溯到西周时期。"},
    {"_id": "wall_dup", "title": "长城", "text": "长城是中国古代的军事防御工程， 修筑历史可上溯到西周时期。"},
    {"_id": "car", "title": "长城汽车", "text": "长城汽车是中国的一家汽车制造公司，总部位于河北保定。"},
    {"_id": "badaling", "title": "八达岭", "text": "八达岭长城是明长城的一段，是著名的旅游景点。"},
    {"_id": "panda", "title": "熊猫", "text": "熊猫是中国特有的哺乳动物，主要生活在四川的山区竹林里。"},
    {"_id": "shanghai", "title": "上海", "text": "上海是中国最大的经济中心城市，位于长江入海口。"},
    {"_id": "tea", "title": "茶", "text": "茶叶起源于中国，饮茶的历史非常悠久。"},
]
ZH_PAIRS = [{"query": "长城的修筑历史可以上溯到什么时期？", "positive": ZH_CORPUS[0]["text"], "query_id": "zq1",
             "positive_id": "wall"}]


def _write(folder: Path, name: str, rows) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return folder


class Run:
    def __init__(self, entry: Path):
        self.entry = entry
        out = entry / "outputs"
        self.triplets = read_jsonl(out / "triplets" / "triplets.jsonl")
        self.ntuples = read_jsonl(out / "ntuples" / "ntuples.jsonl")
        self.labeled = read_jsonl(out / "labeled_pairs" / "labeled_pairs.jsonl")
        self.stats = json.loads((out / "stats" / "stats.json").read_text(encoding="utf-8"))
        self.by_query = {r["query_id"]: r for r in read_jsonl(out / "stats" / "negatives.jsonl")}
        self.summary = json.loads((entry / "metrics.json").read_text(encoding="utf-8"))

    def neg_ids(self, qid: str) -> list[str]:
        return [n["id"] for n in self.by_query[qid]["negatives"]]

    def dropped(self, qid: str) -> dict[str, str]:
        return {n["id"]: n["reason"] for n in self.by_query[qid]["dropped"]}


@pytest.fixture
def mine(tmp_path):
    counter = {"n": 0}

    def run(corpus=EN_CORPUS, pairs=EN_PAIRS, ctx_seed: int = 0, model_input: Path | None = None, **params) -> Run:
        counter["n"] += 1
        base = tmp_path / f"run{counter['n']}"
        inputs = {"corpus": Artifact("corpus", _write(base / "in_corpus", "corpus.jsonl", corpus), "c:corpus"),
                  "pairs": Artifact("pairs", _write(base / "in_pairs", "pairs.jsonl", pairs), "p:train_pairs")}
        if model_input is not None:  # the optional `model` input: a trained embedder's folder
            inputs["model"] = Artifact("embedding_model", model_input, "e:model")
        ctx = NodeContext(node="mine", entry_dir=base / "entry", recipe_dir=tmp_path, seed=ctx_seed)
        hard_negative_mining(MiningParams(**params), inputs, ctx)
        return Run(base / "entry")

    return run


def test_params_validation():
    MiningParams()
    with pytest.raises(ValidationError):
        MiningParams(unknown=1)
    with pytest.raises(ValidationError, match="ranks start at 1"):
        MiningParams(rank_window=(0, 5))
    with pytest.raises(ValidationError, match="before the first"):
        MiningParams(rank_window=(5, 2))
    with pytest.raises(ValidationError, match="fewer than negatives_per_query"):
        MiningParams(rank_window=(3, 4), negatives_per_query=3)
    with pytest.raises(ValidationError, match="needs cross_encoder"):
        MiningParams(ce_max_score=0.5)
    with pytest.raises(ValidationError):
        MiningParams(max_score_ratio=1.5)
    with pytest.raises(ValidationError):
        MiningParams(retriever="sparse")


def test_registered_component():
    from orchestrator.registry import load_registry

    spec = load_registry()["hard_negative_mining"]
    assert spec.outputs == {"triplets": "triplets", "ntuples": "ntuples", "labeled_pairs": "labeled_pairs",
                            "stats": "mining_stats"}
    assert set(spec.inputs) == {"pairs", "corpus", "model"} and spec.inputs["model"].optional
    assert spec.runs_as == "task"


def test_bm25_known_negatives_duplicate_and_near_positive_filtered(mine):
    run = mine(rank_window=(1, 5), negatives_per_query=3, max_score_ratio=0.95)
    # The planted duplicate is never a negative; the near-copy scores like the positive: a likely
    # false negative, dropped by the ratio filter. The next best lexical matches are the negatives.
    assert run.neg_ids("qa") == ["n1", "n2", "n3"]
    assert run.dropped("qa") == {"near": "max_score_ratio"}
    assert [n["rank"] for n in run.by_query["qa"]["negatives"]] == [2, 3, 4]
    st = run.stats
    assert st["filtered_as_likely_positive"]["duplicate_text"] == 1
    assert st["filtered_as_likely_positive"]["max_score_ratio"] == 1
    assert st["skipped_known_positives"] == 3
    # qs: a query with few lexical matches gets none (only its positive shares its words).
    assert st["queries_without_negative"]["count"] == 2
    assert {q["query_id"] for q in st["queries_without_negative"]["queries"]} == {"qs", "qz"}
    assert st["negatives_per_query"] == {"0": 2, "3": 1}
    assert st["rank_histogram"] == {"2": 1, "3": 1, "4": 1}
    assert st["retriever"]["tokenizer"] == "regex"
    # Outputs: triplets and ntuples only for queries with negatives; labeled pairs keep the positives.
    texts = {d["_id"]: d["text"] for d in EN_CORPUS}
    assert run.triplets == [{"query": "apple pie recipe with cinnamon", "positive": texts["pos"], "negative": texts[n]}
                            for n in ("n1", "n2", "n3")]
    assert run.ntuples == [{"query": "apple pie recipe with cinnamon", "pos": [texts["pos"]],
                            "neg": [texts["n1"], texts["n2"], texts["n3"]]}]
    labels = [(r["query"], r["label"]) for r in run.labeled]
    assert labels.count(("apple pie recipe with cinnamon", 1)) == 1
    assert labels.count(("apple pie recipe with cinnamon", 0)) == 3
    assert ("world cup final soccer", 1) in labels and ("zebra xylophone", 1) in labels
    assert run.summary["queries_without_negative"] == 2 and run.summary["negatives_total"] == 3


def test_rank_window_skips_top_ranks_and_without_filter_near_copy_is_kept(mine):
    run = mine(rank_window=(2, 4), negatives_per_query=2, max_score_ratio=None)
    # Ranks after removing the positive and its duplicate: near 1, n1 2, n2 3, n3 4.
    assert run.neg_ids("qa") == ["n1", "n2"]
    run = mine(rank_window=(1, 4), negatives_per_query=2, max_score_ratio=None)
    assert run.neg_ids("qa") == ["near", "n1"]


def test_absolute_margin_filter(mine):
    base = mine(rank_window=(1, 5), negatives_per_query=4, max_score_ratio=None)
    (pos,) = base.by_query["qa"]["positive_scores"]
    scores = {n["id"]: n["score"] for n in base.by_query["qa"]["negatives"]}
    assert list(scores) == ["near", "n1", "n2", "n3"] and pos > 0
    margin = pos - (scores["n1"] + scores["n2"]) / 2  # drops near and n1, keeps n2 and n3
    run = mine(rank_window=(1, 5), negatives_per_query=4, max_score_ratio=None, max_score_margin=margin)
    assert run.neg_ids("qa") == ["n2", "n3"]
    assert run.dropped("qa") == {"near": "max_score_margin", "n1": "max_score_margin"}
    assert run.stats["filtered_as_likely_positive"]["max_score_margin"] == 2
    # The ratio filter runs first: a candidate both would drop is counted once, under the ratio.
    both = mine(rank_window=(1, 5), negatives_per_query=4, max_score_ratio=0.95, max_score_margin=margin)
    assert both.dropped("qa") == {"near": "max_score_ratio", "n1": "max_score_margin"}


def test_all_pairs_of_a_query_are_its_positives(mine):
    pairs = EN_PAIRS[:1] + [{"query": "apple pie recipe with cinnamon", "positive": "apple pie recipe from grandma"}]
    run = mine(pairs=pairs, rank_window=(1, 5), negatives_per_query=2, max_score_ratio=None)
    # n1 is the second pair's positive (matched by text, no id): it is never a negative.
    assert run.neg_ids("qa") == ["near", "n2"]
    assert run.by_query["qa"]["positive_ids"] == ["pos", "n1"]
    assert run.stats["positives_matched_by_text"] == 1
    assert len(run.ntuples) == 1 and len(run.ntuples[0]["pos"]) == 2
    assert len(run.triplets) == 4  # 2 positives x 2 negatives


def test_chinese_jieba_mining(mine):
    run = mine(corpus=ZH_CORPUS, pairs=ZH_PAIRS, rank_window=(1, 3), negatives_per_query=2, max_score_ratio=None)
    assert run.stats["retriever"]["language"] == "zh" and run.stats["retriever"]["tokenizer"] == "jieba"
    negs = run.neg_ids("zq1")
    assert "wall_dup" not in negs and "wall" not in negs
    assert set(negs) <= {"badaling", "car", "tea"} and len(negs) == 2  # passages about 长城 / 历史, not pandas
    assert run.stats["filtered_as_likely_positive"]["duplicate_text"] == 1
    # Texts are written as title\ntext, positives included.
    assert run.ntuples[0]["pos"] == ["长城\n" + ZH_CORPUS[0]["text"]]
    assert all(n.split("\n")[0] in ("八达岭", "长城汽车", "茶") for n in run.ntuples[0]["neg"])


def test_query_batches_do_not_change_the_result(mine):
    one = mine(rank_window=(1, 5), negatives_per_query=2, sampling="random", query_batch=256)
    many = mine(rank_window=(1, 5), negatives_per_query=2, sampling="random", query_batch=1)
    assert one.triplets == many.triplets and one.ntuples == many.ntuples and one.labeled == many.labeled


def _big_corpus(n: int = 40):
    corpus = [{"_id": f"d{i}", "title": "", "text": f"passage {i} about topic {i % 7} and item {i}"} for i in range(n)]
    corpus.append({"_id": "d0copy", "title": "", "text": "passage 0 about topic 0 and item 0"})
    pairs = [{"query": f"question {i}", "positive": corpus[i]["text"], "query_id": f"q{i}", "positive_id": f"d{i}"}
             for i in range(0, n, 4)]
    return corpus, pairs


def test_random_mode_excludes_positives_and_is_seeded(mine):
    corpus, pairs = _big_corpus()
    a = mine(corpus=corpus, pairs=pairs, mode="random", negatives_per_query=5, seed=1)
    b = mine(corpus=corpus, pairs=pairs, mode="random", negatives_per_query=5, seed=1)
    c = mine(corpus=corpus, pairs=pairs, mode="random", negatives_per_query=5, seed=2)
    for pair in pairs:
        negs = a.neg_ids(pair["query_id"])
        assert len(negs) == 5 and len(set(negs)) == 5
        assert pair["positive_id"] not in negs
        if pair["positive_id"] == "d0":
            assert "d0copy" not in negs
    assert a.triplets == b.triplets and a.ntuples == b.ntuples
    assert a.triplets != c.triplets
    assert a.stats["mode"] == "random" and a.stats["rank_histogram"] == {} and a.stats["retriever"] is None
    # The params seed overrides the recipe seed.
    d = mine(corpus=corpus, pairs=pairs, mode="random", negatives_per_query=5, ctx_seed=9, seed=1)
    assert d.triplets == a.triplets
    e = mine(corpus=corpus, pairs=pairs, mode="random", negatives_per_query=5, ctx_seed=1)  # the recipe's seed
    assert e.triplets == a.triplets


def test_random_mode_small_corpus_takes_all_eligible(mine):
    corpus = EN_CORPUS[:3]  # pos, its duplicate and near
    run = mine(corpus=corpus, pairs=EN_PAIRS[:1], mode="random", negatives_per_query=5)
    assert run.neg_ids("qa") == ["near"]
    assert run.stats["queries_short_of_negatives"] == 1


def test_hard_random_sampling_is_seeded_and_within_window(mine):
    corpus, pairs = _big_corpus()
    kw = dict(corpus=corpus, pairs=pairs, rank_window=(1, 20), negatives_per_query=3, sampling="random",
              max_score_ratio=None)
    a, b = mine(seed=3, **kw), mine(seed=3, **kw)
    assert a.triplets == b.triplets
    for q in a.by_query.values():
        assert all(1 <= n["rank"] <= 20 for n in q["negatives"])


def test_dense_and_hybrid_mining(mine):
    run = mine(retriever="dense", rank_window=(1, 4), negatives_per_query=2, max_score_ratio=0.95)
    qa = run.by_query["qa"]
    assert "dup" not in run.neg_ids("qa") and "pos" not in run.neg_ids("qa")
    assert all(-1.0 <= n["score"] <= 1.0 for n in qa["negatives"])  # cosines
    assert run.stats["retriever"]["name"] == "dense"
    assert len(run.neg_ids("qa")) == 2
    hybrid = mine(retriever="hybrid", rank_window=(1, 4), negatives_per_query=2, max_score_ratio=None)
    assert hybrid.stats["retriever"]["name"] == "hybrid"
    assert len(hybrid.neg_ids("qa")) == 2 and "dup" not in hybrid.neg_ids("qa")


def test_cross_encoder_filter(mine, tmp_path):
    import torch
    from sentence_transformers import CrossEncoder

    from components.models import resolve_model

    torch.manual_seed(0)
    ce_dir = tmp_path / "ce"
    CrossEncoder(resolve_model("minilm")).save(str(ce_dir))  # a real (untrained-head) cross-encoder
    base = mine(rank_window=(1, 6), negatives_per_query=6, max_score_ratio=None)
    cands = base.neg_ids("qa")
    ce = CrossEncoder(str(ce_dir))
    texts = {d["_id"]: d["text"] for d in EN_CORPUS}
    query = "apple pie recipe with cinnamon"
    scores = dict(zip(cands, ce.predict([(query, texts[c]) for c in cands]).tolist()))
    threshold = sorted(scores.values())[len(scores) // 2]
    run = mine(rank_window=(1, 6), negatives_per_query=6, max_score_ratio=None, cross_encoder=str(ce_dir),
               ce_max_score=threshold)
    expected_dropped = {c for c, s in scores.items() if s >= threshold}
    assert set(run.dropped("qa")) == expected_dropped and expected_dropped
    assert set(run.dropped("qa").values()) == {"cross_encoder"}
    assert run.neg_ids("qa") == [c for c in cands if c not in expected_dropped]
    # Without ce_max_score the limit is the positive's own cross-encoder score.
    pos_score = float(ce.predict([(query, texts["pos"])])[0])
    run = mine(rank_window=(1, 6), negatives_per_query=6, max_score_ratio=None, cross_encoder=str(ce_dir))
    assert set(run.dropped("qa")) == {c for c, s in scores.items() if s >= pos_score}


def test_bad_inputs(mine):
    with pytest.raises(MiningError, match="corpus is empty"):
        mine(corpus=[])
    with pytest.raises(MiningError, match="needs a query and a positive"):
        mine(pairs=[{"query": "x", "positive": ""}])
    with pytest.raises(MiningError, match="duplicate corpus id"):
        mine(corpus=EN_CORPUS + EN_CORPUS[:1])


def test_the_cyclic_gc_is_paused_while_mining_and_restored_after(mine, monkeypatch):
    import gc

    import components.mining as mining

    seen = []
    read = mining._read_corpus
    monkeypatch.setattr(mining, "_read_corpus", lambda path: seen.append(gc.isenabled()) or read(path))
    assert gc.isenabled()
    mine()
    assert seen == [False] and gc.isenabled()
    with pytest.raises(MiningError):
        mine(corpus=[])
    assert gc.isenabled()
    gc.disable()
    try:
        mine()
        assert not gc.isenabled()  # left as the caller had it
    finally:
        gc.enable()


def test_normalize_text():
    assert normalize_text(" Ａpple  Pie\n") == normalize_text("apple pie") == "applepie"
    assert normalize_text("a\u00a0b\u3000c\u2028d\te") == "abcde"  # every Unicode space goes


@pytest.mark.parametrize("title,text", [
    ("Straße", "ǅ ﬁ ①"),  # casefold ß -> ss, NFKC of ligatures and circled digits
    ("e", "\u0301 accent first"),  # a combining mark right after the newline: NFKC must not compose it
    ("ko\u0301", "\u0327x"),  # marks on both sides of the boundary
    ("  ", "only text"), ("only title", " \n "), ("", ""),
    ("北京 大学", "ｈａｌｆ　ｗｉｄｔｈ ＡＢＣ"),  # fullwidth forms and the ideographic space
    ("\u1100", "\u1161"),  # Hangul jamo that compose when adjacent
])
def test_doc_norms_match_normalising_the_passage_text(title, text):
    from components.retrieval import passage_text

    doc = {"title": title, "text": text}
    assert doc_norms(doc) == (normalize_text(text), normalize_text(passage_text(doc)))


def test_positive_outside_the_hits_is_scored(mine):
    # The positive shares no word with the query: BM25 does not retrieve it (score 0), so every
    # candidate scores above it and the ratio filter drops them all as likely positives.
    pairs = [{"query": "apple pie", "positive": "violins are string instruments played with a bow", "query_id": "qv",
              "positive_id": "u2"}]
    run = mine(pairs=pairs, rank_window=(1, 5), negatives_per_query=2)
    assert run.by_query["qv"]["positive_scores"] == [0.0]
    assert run.neg_ids("qv") == [] and set(run.dropped("qv").values()) == {"max_score_ratio"}
    assert run.stats["queries_without_negative"]["queries"] == [{"query_id": "qv", "query": "apple pie"}]
    assert run.triplets == [] and run.ntuples == [] and run.labeled == [
        {"query": "apple pie", "doc": "violins are string instruments played with a bow", "label": 1}]
    run = mine(pairs=pairs, rank_window=(1, 5), negatives_per_query=2, max_score_ratio=None)
    assert len(run.neg_ids("qv")) == 2


def test_dense_mining_extends_the_vocabulary_for_unknown_words(mine):
    """Every character below except 的/店 is [UNK] to MiniLM: as shipped, all passages embed alike and the
    first ones in the corpus come out on top. With the default extend_vocab the corpus's unknown
    characters get tokens, so the passages sharing a word with the query rank first."""
    texts = {"c": "鲸鲨 蜗蚪 的 店", "d": "粽糕 蜗蚪 的 店", "e": "蜗蚪 鲸鲨 的 店",
             "a": "烤鸭 粽糕 的 店", "b": "鲸鲨 馄饨 的 店", "pos": "烤鸭 馄饨 的 店"}
    corpus = [{"_id": k, "title": "", "text": v} for k, v in texts.items()]
    pairs = [{"query": "烤鸭 馄饨", "positive": texts["pos"], "query_id": "q", "positive_id": "pos"}]
    params = dict(retriever="dense", rank_window=(1, 2), negatives_per_query=2, max_score_ratio=None)
    run = mine(corpus=corpus, pairs=pairs, **params)
    assert "vocabulary: +" in (run.entry / "log.txt").read_text(encoding="utf-8")
    assert set(run.neg_ids("q")) == {"a", "b"}, run.by_query["q"]
    plain = mine(corpus=corpus, pairs=pairs, extend_vocab=None, **params)
    assert "vocabulary: +" not in (plain.entry / "log.txt").read_text(encoding="utf-8")
    assert set(plain.neg_ids("q")) != {"a", "b"}, plain.by_query["q"]


def test_the_model_input_replaces_the_model_param(mine, tmp_path):
    """A trained embedder connected as the `model` input is what dense mining ranks with. Here that
    embedder is MiniLM with its word embeddings zeroed: every passage embeds alike, so its "hardest"
    negatives are not MiniLM's."""
    import torch

    from components.models import resolve_model
    from components.retrieval import load_model

    broken = load_model(str(resolve_model("minilm")))
    with torch.no_grad():
        broken[0].auto_model.embeddings.word_embeddings.weight.zero_()
    broken.save(str(tmp_path / "broken"))
    params = dict(retriever="dense", rank_window=(1, 8), negatives_per_query=3, max_score_ratio=None,
                  extend_vocab=None)
    plain = mine(**params)
    assert plain.stats["embedding_model"] == str(resolve_model("minilm"))
    assert set(plain.neg_ids("qa")) <= {"near", "n1", "n2", "n3", "dup"}  # MiniLM: the apple passages

    tuned = mine(model_input=tmp_path / "broken", **params)
    assert tuned.stats["embedding_model"] == str(tmp_path / "broken")
    assert "embedding model from the `model` input" in (tuned.entry / "log.txt").read_text(encoding="utf-8")
    assert tuned.neg_ids("qa") != plain.neg_ids("qa"), (tuned.by_query["qa"], plain.by_query["qa"])
    with pytest.raises(ValueError, match="set retriever: dense or hybrid"):
        mine(model_input=tmp_path / "broken", **{**params, "retriever": "bm25"})
    with pytest.raises(ValueError, match="set retriever: dense or hybrid"):
        mine(model_input=tmp_path / "broken", **{**params, "mode": "random"})
