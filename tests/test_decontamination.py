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
    """Distinct entries found, by a per-domain, per-keyword, per-position scan."""
    import re

    out = {}
    for d, ws in lexicons.items():
        out[d] = 0
        for w in ws:
            cased = w.startswith("=")
            toks = re.findall(r"[A-Za-z0-9_#+]+", text) if cased else tokenize(text)
            kw = re.findall(r"[A-Za-z0-9_#+]+", w[1:]) if cased else tokenize(w)
            out[d] += any(toks[i:i + len(kw)] == kw for i in range(len(toks) - len(kw) + 1))
    return out


def test_matcher_agrees_with_naive_per_keyword_loop():
    lex = {**LEX, "code": LEX["code"] + ["=class", "for i in range", "=SQL"]}
    texts = ["Write a Python function: def f(): return a list in a loop", "The patient symptoms and treatment",
             "thank you letter about the court", "nothing here", "list list list python python",
             "class Foo: for i in range(3): pass", "The CLASS Act; each Class of SQL sql", "for i in ranges"]
    m = KeywordMatcher(lex)
    for t in texts:
        scores, _ = m.score(t)
        assert dict(zip(m.domains, scores.tolist())) == _naive_scores(t, lex), t


def test_planted_code_row_in_chat_moves_to_code_with_reason():
    rows = _rows([("chat", "Write a thank-you letter to Ana.", "Dear Ana, thank you."),
                  ("chat", "Write a Python function that returns a list", "def f(xs):\n    return list(xs)  # loop-free"),
                  ("code", "def add(a, b)", "return a + b"),
                  ("chat", "The plaintiff sued the defendant in court", "The court applied the statute.")])
    kept, moves, dropped, flagged = decontaminate(rows, LEX, ["chat", "code", "medical"], margin=3, min_score=3)
    assert len(kept) + len(dropped) == len(rows) and flagged.empty
    assert moves["record_id"].tolist() == [f"{1:016x}"]
    assert moves.iloc[0]["from_domain"] == "chat" and moves.iloc[0]["to_domain"] == "code"
    assert moves.iloc[0]["top_keywords"] == "def, function, list, loop, python, return"
    assert "margin 3" in moves.iloc[0]["reason"] and "6 distinct code keywords" in moves.iloc[0]["reason"]
    assert kept.set_index("record_id").loc[f"{1:016x}", "domain"] == "code"
    assert kept.set_index("record_id").loc[f"{1:016x}", "origin_domain"] == "chat"
    # legal is not part of the run: dropped, with the reason saying so
    assert dropped["record_id"].tolist() == [f"{3:016x}"] and "not part of this run" in dropped.iloc[0]["reason"]


def test_margin_protects_rows_with_a_few_foreign_words():
    rows = _rows([("medical", "A patient asks about the python drug", "The treatment list is short.")])
    kept, moves, dropped, _ = decontaminate(rows, LEX, ["code", "medical"], margin=3, min_score=3)
    assert moves.empty and dropped.empty and kept["domain"].tolist() == ["medical"]


def test_a_repeated_word_is_one_signal():
    """GSM8K 'sixth-grade classes': class x8 used to move the row to code."""
    lex = {"code": ["=class", "python", "def", "return"], "math": ["how many", "total"]}
    text = ("There are 4 sixth-grade classes. Each class has 20 students; the class trip costs $5 per class member. "
            "If every class goes, and one class more joins, class by class, how many go? class class")
    kept, moves, dropped, flagged = decontaminate(_rows([("math", text, "#### 100")]), lex, ["code", "math"],
                                                  margin=1, min_score=1)
    assert kept["domain"].tolist() == ["math"] and moves.empty  # 1 code keyword vs 1 math keyword


def test_case_rule_keeps_python_class_apart_from_prose():
    lex = {"code": ["=class", "=def", "=return", "python"], "medical": ["patient"]}
    m = KeywordMatcher(lex)
    assert m.score("The CLASS Act and the Class of 2020 Return home")[0].tolist() == [0, 0]
    assert m.score("class Foo:\n    def f(self):\n        return 1")[0].tolist() == [3, 0]
    assert m.score("classes, definitions, returns")[0].tolist() == [0, 0]  # whole words only


SINGLE = "local:gsm8k/train.jsonl"
MIXED = "local:chat/sharegpt.json"


def _sourced(items):
    df = _rows([(d, p, r) for d, p, r, _ in items])
    df["source_uri"] = [u for *_, u in items]
    return df


def test_source_prior_single_domain_rows_are_flagged_not_moved():
    four = "Write a Python function, def f, that will return a list"  # python, function, def, return, list
    rows = _sourced([("math", four, "ok", SINGLE), ("chat", four, "ok", MIXED)])
    kept, moves, dropped, flagged = decontaminate(rows, LEX, ["chat", "code", "math"], margin=3, min_score=3,
                                                  mixed_sources={MIXED}, single_domain_min_score=8)
    assert moves["source_uri"].tolist() == [MIXED] and moves.iloc[0]["to_domain"] == "code"
    assert flagged["source_uri"].tolist() == [SINGLE] and "kept" in flagged.iloc[0]["reason"]
    assert kept.set_index("source_uri").loc[SINGLE, "domain"] == "math"


def test_source_prior_overwhelming_evidence_still_moves():
    lex = {**LEX, "code": LEX["code"] + ["class", "import", "lambda", "array"]}
    nine = "python function def return list loop class import lambda array"
    rows = _sourced([("math", nine, "x", SINGLE)])
    _, moves, _, flagged = decontaminate(rows, lex, ["code", "math"], margin=3, min_score=3,
                                         mixed_sources=set(), single_domain_min_score=8)
    assert len(moves) == 1 and flagged.empty


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


STEM = "Which of the following, if true, would most seriously weaken the argument above and the conclusion drawn?"


def _logiqa_items(k):
    topics = ["rivers", "taxes", "birds", "voters", "metals", "cities", "tests", "farms"]
    return [f"Context: the {topics[i]} study found {i} effects in region {i}. {STEM} A. yes B. no" for i in range(k)]


def test_benchmark_template_stem_is_not_contamination():
    """LogiQA: 54 of 56 drops shared only the question stem."""
    index = build_index({"logiqa": _logiqa_items(6)}, n=13, template_min_items=5)
    row = _rows([("reasoning", f"A new survey of bakers shows bread prices rose. {STEM}", "Answer: C")])
    clean, removed = remove_contaminated(row, index)
    assert removed.empty and len(clean) == 1 and index.templates["logiqa"] > 0
    every = build_index({"logiqa": _logiqa_items(6)}, n=13, template_min_items=None)  # the old rule
    assert len(remove_contaminated(row, every)[1]) == 1


def test_real_near_duplicate_is_still_removed_next_to_templates():
    gsm = "Janet's ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her " \
          "friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck egg."
    items = _logiqa_items(6) + [gsm]
    index = build_index({"mixed_bench": items}, n=13, template_min_items=5)
    near = gsm.replace("Janet's", "Mary's").replace("$2", "$3")
    clean, removed = remove_contaminated(_rows([("math", near, "#### 18")]), index)
    assert len(removed) == 1 and removed.iloc[0]["benchmark"] == "mixed_bench"
    assert "shares" in removed.iloc[0]["reason"] and int(removed.iloc[0]["reason"].split()[1]) >= 2


def test_stem_common_to_many_training_rows_is_boilerplate():
    """A stem rare in the benchmark but shared by many training rows (LogiQA Eval vs Test) is not a copy."""
    index = build_index({"logiqa": _logiqa_items(1) + ["an unrelated item about the tides of the northern sea"]},
                        n=13, template_min_items=3)
    rows = _rows([("reasoning", f"Context {w}: a report on {w} says things changed. {STEM}", "Answer: A")
                  for w in ("bakers", "miners", "pilots")])
    clean, removed = remove_contaminated(rows, index, template_min_rows=3)
    assert removed.empty and len(clean) == 3
    assert len(remove_contaminated(rows, index)[1]) == 3  # counting every n-gram drops all three


def test_alternatives_of_one_entry_are_one_signal():
    m = KeywordMatcher({"code": ["python|java|javascript|typescript", "=def"], "medical": ["patient|patients"]})
    scores, found = m.score("Python, Java, JavaScript and TypeScript: which to learn? patients and a patient")
    assert scores.tolist() == [1, 1] and found[0] == ["java"] and found[1] == ["patient"]
