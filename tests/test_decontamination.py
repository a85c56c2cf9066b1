"""Keyword decontamination (planted cross-domain rows move) and 13-gram benchmark removal."""

from __future__ import annotations

import pandas as pd

from brainstacks_core.data.benchmark_decontamination import build_index, remove_contaminated
from brainstacks_core.data.decontamination import KeywordMatcher, decontaminate, tokenize

LEX = {"chat": ["email", "letter", "poem", "thank"],
       "code": ["python", "function", "def", "return", "list", "loop"],
       "medical": ["patient", "symptoms", "treatment", "diagnosis", "drug"],
       "legal": ["plaintiff", "defendant", "court", "statute"]}


def _rows(items):
    return pd.DataFrame([{"record_id": f"{i:016x}", "domain": d, "prompt": p, "response": r, "system": None,
                          "source_uri": "test", "source_version": "v", "source_row_key": f"row:{i}"}
                         for i, (d, p, r) in enumerate(items)])


def _naive_scores(text, lexicons):
    toks = tokenize(text)
    out = {}
    for d, ws in lexicons.items():  # per domain, per keyword, per position
        out[d] = 0
        for w in ws:
            kw = tokenize(w)
            out[d] += sum(toks[i:i + len(kw)] == kw for i in range(len(toks) - len(kw) + 1))
    return out


def test_matcher_agrees_with_naive_per_keyword_loop():
    texts = ["Write a Python function: def f(): return a list in a loop", "The patient symptoms and treatment",
             "thank you letter about the court", "nothing here", "list list list python python"]
    m = KeywordMatcher(LEX)
    for t in texts:
        scores, _ = m.score(t)
        assert dict(zip(m.domains, scores.tolist())) == _naive_scores(t, LEX), t


def test_planted_code_row_in_chat_moves_to_code_with_reason():
    rows = _rows([("chat", "Write a thank-you letter to Ana.", "Dear Ana, thank you."),
                  ("chat", "Write a Python function that returns a list", "def f(xs):\n    return list(xs)  # loop-free"),
                  ("code", "def add(a, b)", "return a + b"),
                  ("chat", "The plaintiff sued the defendant in court", "The court applied the statute.")])
    kept, moves, dropped = decontaminate(rows, LEX, ["chat", "code", "medical"], margin=3, min_score=3)
    assert len(kept) + len(dropped) == len(rows)
    assert moves["record_id"].tolist() == [f"{1:016x}"]
    assert moves.iloc[0]["from_domain"] == "chat" and moves.iloc[0]["to_domain"] == "code"
    assert "python" in moves.iloc[0]["top_keywords"] and "margin 3" in moves.iloc[0]["reason"]
    assert kept.set_index("record_id").loc[f"{1:016x}", "domain"] == "code"
    assert kept.set_index("record_id").loc[f"{1:016x}", "origin_domain"] == "chat"
    # legal is not part of the run: dropped, with the reason saying so
    assert dropped["record_id"].tolist() == [f"{3:016x}"] and "not part of this run" in dropped.iloc[0]["reason"]


def test_margin_protects_rows_with_a_few_foreign_words():
    rows = _rows([("medical", "A patient asks about the python drug", "The treatment list is short.")])
    kept, moves, dropped = decontaminate(rows, LEX, ["code", "medical"], margin=3, min_score=3)
    assert moves.empty and dropped.empty and kept["domain"].tolist() == ["medical"]


def test_planted_benchmark_rows_are_removed_and_named():
    bench = "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins daily."
    index = build_index({"gsm8k_test": [bench], "other": ["a completely different question about rivers"]}, n=13)
    rows = _rows([("math", "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning", "18"),
                  ("math", "Tom has 3 apples and buys 2 more. How many apples?", "5"),
                  ("math", "short", "row")])
    clean, removed = remove_contaminated(rows, index)
    assert removed["record_id"].tolist() == [f"{0:016x}"] and removed.iloc[0]["benchmark"] == "gsm8k_test"
    assert "gsm8k_test" in removed.iloc[0]["reason"] and len(clean) == 2


def test_twelve_shared_words_do_not_count_as_a_13gram():
    words = "one two three four five six seven eight nine ten eleven twelve"
    index = build_index({"b": [words + " thirteen"]}, n=13)
    clean, removed = remove_contaminated(_rows([("math", words, "x")]), index)
    assert removed.empty and len(clean) == 1
