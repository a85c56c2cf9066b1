"""Verifiable rewards of the per-domain GRPO stage (paper 6.2).

* **math**: exact answer (the number after GSM8K's ``####``, else the last number of
  the completion, against the reference's ``####`` answer) plus a format reward for
  ending with ``#### <number>``;
* **code**: the completion's program (its ```` ```python ```` block, else the whole text)
  run with the reference's ``assert`` tests in :mod:`~brainstacks_core.training.sandbox`
  (syntax, tests pass, format);
* **medical**: a rubric from the reference answer: the share of its content keywords the
  completion mentions, plus a safety item (no unqualified "always"/"never"/dosing advice
  without a clinician) and a completeness item (one full sentence).

Every reward function has trl's signature, ``f(prompts, completions, **columns) ->
list[float]``, where ``completions`` are strings or conversational message lists and the
dataset's columns arrive as keyword lists (``answer``, ``tests``, ``reference``).
:func:`grpo_columns` builds those columns from a domain's prompt/response rows.
"""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import pandas as pd

from brainstacks_core.training.sandbox import SandboxLimits, run_python

_NUM = r"-?\d+(?:,\d{3})*(?:\.\d+)?"
_STOP = set("a an the of to in on for and or is are be by with as at it its this that which from can may "
            "usually common commonly include includes such often mainly most first line".split())


def _text(completion) -> str:
    if isinstance(completion, list):  # conversational: [{"role": "assistant", "content": ...}]
        return " ".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion)


def _number(s: str) -> float | None:
    try:
        return float(s.replace(",", ""))
    except ValueError:
        return None


def final_answer(text: str) -> float | None:
    """The ``#### N`` answer of a text, else its last number (None when it has none)."""
    m = re.search(r"####\s*(" + _NUM + ")", text)
    if m:
        return _number(m.group(1))
    nums = re.findall(_NUM, text)
    return _number(nums[-1]) if nums else None


def math_reward(prompts, completions, answer, **_) -> list[float]:
    """1.0 for the exact answer, plus 0.2 for the ``#### <number>`` format."""
    out = []
    for c, want in zip(completions, answer):
        t = _text(c)
        got = final_answer(t)
        exact = got is not None and want is not None and abs(got - float(want)) < 1e-6
        fmt = re.search(r"####\s*" + _NUM + r"\s*$", t.strip()) is not None
        out.append(float(exact) + 0.2 * float(fmt))
    return out


def extract_program(text: str) -> str:
    """The first ```` ```python ```` (or bare ```` ``` ````) block of a text, else the text itself."""
    m = re.search(r"```(?:python|py)?\s*\n(.*?)```", text, re.S)
    return m.group(1) if m else text


def make_code_reward(limits: SandboxLimits | None = None, workers: int = 4) -> Callable[..., list[float]]:
    """A code reward running each completion against its tests in the sandbox.

    Score: 0.1 format (a fenced code block) + 0.2 syntax (it compiles) + 0.7 tests pass.
    """
    limits = limits or SandboxLimits()

    def code_reward(prompts, completions, tests, **_) -> list[float]:
        texts = [_text(c) for c in completions]
        programs = [extract_program(t) for t in texts]

        def score(i: int) -> float:
            fmt = 0.1 * ("```" in texts[i])
            try:
                compile(programs[i], "completion.py", "exec")
            except (SyntaxError, ValueError):
                return fmt
            result = run_python(programs[i] + "\n\n" + str(tests[i]) + "\n", limits)
            return fmt + 0.2 + 0.7 * result.passed

        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(score, range(len(texts))))

    return code_reward


def rubric_keywords(reference: str, k: int = 6) -> list[str]:
    """Up to ``k`` content words of a reference answer (the rubric's factual items)."""
    words = [w.lower() for w in re.findall(r"[A-Za-z][A-Za-z\-]{3,}", reference)]
    seen: list[str] = []
    for w in words:
        if w not in _STOP and w not in seen:
            seen.append(w)
    return seen[:k]


_UNSAFE = re.compile(r"\b(always safe|never see a doctor|no need (?:for|to see) a doctor|double the dose)\b", re.I)


def medical_reward(prompts, completions, reference, **_) -> list[float]:
    """Rubric: 0.7 x share of the reference's keywords mentioned + 0.15 safe + 0.15 complete sentence."""
    out = []
    for c, ref in zip(completions, reference):
        t = _text(c).lower()
        keys = rubric_keywords(str(ref))
        facts = sum(k in t for k in keys) / len(keys) if keys else 0.0
        safe = _UNSAFE.search(t) is None
        complete = bool(re.search(r"[a-z].{8,}[.!?]", t))
        out.append(0.7 * facts + 0.15 * safe + 0.15 * complete)
    return out


REWARD_COLUMNS = {"math": "answer", "code": "tests", "medical": "reference"}


def grpo_columns(kind: str, df: pd.DataFrame) -> pd.DataFrame:
    """The reward's dataset columns from prompt/response rows (rows a reward cannot check are dropped).

    math: ``answer`` (the reference's final number); code: ``tests`` (the reference's
    ``assert`` lines); medical: ``reference`` (the reference answer).
    """
    if kind not in REWARD_COLUMNS:
        raise ValueError(f"no reward for {kind!r}; known: math, code, medical")
    keep = [c for c in ("prompt", "system") if c in df.columns] + [REWARD_COLUMNS[kind]]
    return _columns(kind, df)[keep]


def _columns(kind: str, df: pd.DataFrame) -> pd.DataFrame:
    if kind == "math":
        ans = df["response"].map(lambda r: final_answer(str(r)))
        return df.assign(answer=ans)[ans.notna()]
    if kind == "code":
        tests = df["response"].map(lambda r: "\n".join(ln for ln in str(r).splitlines()
                                                       if ln.strip().startswith("assert ")))
        return df.assign(tests=tests)[tests.str.len() > 0]
    return df.assign(reference=df["response"].astype(str))


def reward_function(kind: str, sandbox_timeout_s: float = 5.0) -> Callable[..., list[float]]:
    """The trl reward function of a reward kind (``math``, ``code``, ``medical``)."""
    if kind == "math":
        return math_reward
    if kind == "code":
        return make_code_reward(SandboxLimits(wall_s=sandbox_timeout_s, cpu_s=max(1, int(sandbox_timeout_s))))
    if kind == "medical":
        return medical_reward
    raise ValueError(f"no reward for {kind!r}; known: math, code, medical")
