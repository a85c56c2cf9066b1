"""Deterministic generators of small, real domain datasets for the offline demo profile.

Each generator returns rows with exact answers that later steps can check:
math rows end with GSM8K's ``#### <number>`` (a GRPO reward can parse it), code
rows carry a Python function and ``assert`` tests that pass, medical rows come
from a small fact table, reasoning rows are ordering puzzles and number sequences
with a ``<think>`` trace, chat rows are plain instructions with exact outputs.

Generated rows are written as jsonl under the artifact store and read back as an
ordinary source, so they go through the same pipeline as real data.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable

from brainstacks_core.files import atomic_write_text
from brainstacks_core.lineage.versioning import content_hash

GENERATOR_VERSION = 1
_NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lena",
          "Milo", "Nia", "Omar", "Pia", "Quinn", "Rosa", "Sami", "Tess", "Uma", "Vik", "Wen", "Yara"]
_ITEMS = ["apples", "marbles", "stickers", "pencils", "cookies", "stamps", "shells", "cards", "books", "coins"]


def _math(rng: random.Random, i: int) -> dict:
    name, friend = rng.sample(_NAMES, 2)
    item = rng.choice(_ITEMS)
    kind = i % 6
    if kind == 0:
        a, b = rng.randint(5, 90), rng.randint(2, 40)
        c = rng.randint(1, a + b - 1)
        s, r = a + b, a + b - c
        q = (f"{name} has {a} {item}. {name} buys {b} more and then gives {c} to {friend}. "
             f"How many {item} does {name} have now?")
        steps = f"After buying: {a} + {b} = <<{a}+{b}={s}>>{s}.\nAfter giving {c} away: {s} - {c} = <<{s}-{c}={r}>>{r}."
    elif kind == 1:
        p, n = rng.randint(2, 15), rng.randint(2, 9)
        bill = next(x for x in (20, 50, 100, 200) if x >= p * n)
        t, r = p * n, bill - p * n
        q = (f"A shop sells {item} for ${p} each. {name} buys {n} {item} and pays with a ${bill} bill. "
             f"How much change does {name} get?")
        steps = f"Cost: {n} * {p} = <<{n}*{p}={t}>>{t} dollars.\nChange: {bill} - {t} = <<{bill}-{t}={r}>>{r}."
    elif kind == 2:
        p, d, q2, e = rng.randint(5, 40), rng.randint(2, 9), rng.randint(5, 40), rng.randint(2, 9)
        x, y = p * d, q2 * e
        r = x + y
        q = (f"{name} reads {p} pages a day for {d} days, then {q2} pages a day for {e} days. "
             f"How many pages does {name} read in total?")
        steps = (f"First part: {p} * {d} = <<{p}*{d}={x}>>{x}.\nSecond part: {q2} * {e} = <<{q2}*{e}={y}>>{y}.\n"
                 f"Total: {x} + {y} = <<{x}+{y}={r}>>{r}.")
    elif kind == 3:
        v, h = rng.randint(30, 120), rng.randint(2, 8)
        r = v * h
        q = f"{name}'s train travels at {v} km per hour for {h} hours. How many km does it travel?"
        steps = f"Distance: {v} * {h} = <<{v}*{h}={r}>>{r} km."
    elif kind == 4:
        k, each = rng.randint(2, 9), rng.randint(2, 15)
        tot = k * each
        r = each
        q = f"{name} shares {tot} {item} equally among {k} friends. How many {item} does each friend get?"
        steps = f"Each friend gets {tot} / {k} = <<{tot}/{k}={r}>>{r}."
    else:
        p, pct = rng.choice(range(20, 400, 20)), rng.choice([10, 20, 25, 50])
        off = p * pct // 100
        r = p - off
        q = f"A jacket costs ${p} and {name} gets {pct}% off. What price does {name} pay in dollars?"
        steps = f"Discount: {p} * {pct} / 100 = <<{p}*{pct}/100={off}>>{off}.\nPrice: {p} - {off} = <<{p}-{off}={r}>>{r}."
    return {"prompt": q, "response": f"{steps}\n#### {r}", "answer": r}


_CODE_SPECS: list[tuple[str, str, str, Callable[[int], list[tuple[str, object]]]]] = [
    ("add_{k}", "returns its argument plus {k}", "def add_{k}(x):\n    return x + {k}",
     lambda k: [("add_{k}(0)", k), ("add_{k}(5)", 5 + k)]),
    ("scale_by_{k}", "multiplies every number of a list by {k}",
     "def scale_by_{k}(xs):\n    return [x * {k} for x in xs]", lambda k: [("scale_by_{k}([1, 2])", [k, 2 * k])]),
    ("divisible_by_{k}", "tells whether an integer is divisible by {k}",
     "def divisible_by_{k}(n):\n    return n % {k} == 0", lambda k: [("divisible_by_{k}({k2})", True), ("divisible_by_{k}({k}+1)", False)]),
    ("sum_squares_{k}", "returns the sum of the squares of 1..{k}",
     "def sum_squares_{k}():\n    total = 0\n    for i in range(1, {k} + 1):\n        total += i * i\n    return total",
     lambda k: [("sum_squares_{k}()", sum(i * i for i in range(1, k + 1)))]),
    ("repeat_{k}", "repeats a string {k} times", "def repeat_{k}(s):\n    return s * {k}",
     lambda k: [("repeat_{k}('ab')", "ab" * k)]),
    ("above_{k}", "keeps the numbers of a list that are greater than {k}",
     "def above_{k}(xs):\n    return [x for x in xs if x > {k}]", lambda k: [("above_{k}([{k}, {k}+1, 0])", [k + 1])]),
    ("count_multiples_{k}", "counts the multiples of {k} below 100",
     "def count_multiples_{k}():\n    return len([n for n in range(1, 100) if n % {k} == 0])",
     lambda k: [("count_multiples_{k}()", len([n for n in range(1, 100) if n % k == 0]))]),
    ("power_{k}", "raises a number to the power {k}", "def power_{k}(x):\n    return x ** {k}",
     lambda k: [("power_{k}(2)", 2 ** k)]),
]


def _code(rng: random.Random, i: int) -> dict:
    name, doc, body, tests = _CODE_SPECS[i % len(_CODE_SPECS)]
    k = 2 + (i // len(_CODE_SPECS)) % 60 + 60 * rng.randint(0, 3)
    fill = {"k": k, "k2": 2 * k}
    fn = name.format(**fill)
    code = body.format(**fill)
    asserts = "\n".join(f"assert {call.format(**fill)} == {expected!r}" for call, expected in tests(k))
    prompt = f"Write a Python function `{fn}` that {doc.format(**fill)}. Include assert tests."
    response = f"```python\n{code}\n```\n\nTests:\n```python\n{asserts}\n```"
    return {"prompt": prompt, "response": response, "code": code, "tests": asserts}


# (condition, organ system, key symptoms, first-line management, specialist)
_CONDITIONS = [
    ("asthma", "respiratory", "wheezing, cough and shortness of breath", "an inhaled bronchodilator", "pulmonologist"),
    ("type 2 diabetes", "endocrine", "thirst, frequent urination and fatigue", "lifestyle change and metformin", "endocrinologist"),
    ("hypertension", "cardiovascular", "often no symptoms; sometimes headache", "lifestyle change and antihypertensive drugs", "cardiologist"),
    ("migraine", "nervous", "throbbing headache, nausea and light sensitivity", "rest and analgesics such as triptans", "neurologist"),
    ("iron deficiency anemia", "blood", "fatigue, pallor and shortness of breath", "oral iron supplements", "hematologist"),
    ("hypothyroidism", "endocrine", "fatigue, weight gain and cold intolerance", "levothyroxine", "endocrinologist"),
    ("urinary tract infection", "urinary", "burning urination and frequent urination", "antibiotics", "urologist"),
    ("gastroesophageal reflux disease", "digestive", "heartburn and regurgitation", "proton pump inhibitors", "gastroenterologist"),
    ("pneumonia", "respiratory", "fever, cough and chest pain", "antibiotics for bacterial pneumonia", "pulmonologist"),
    ("osteoarthritis", "musculoskeletal", "joint pain and stiffness", "exercise and analgesics", "rheumatologist"),
    ("eczema", "skin", "itchy, dry and inflamed skin", "emollients and topical steroids", "dermatologist"),
    ("gout", "musculoskeletal", "sudden painful swelling of a joint", "anti-inflammatory drugs", "rheumatologist"),
    ("heart failure", "cardiovascular", "breathlessness, ankle swelling and fatigue", "diuretics and ACE inhibitors", "cardiologist"),
    ("epilepsy", "nervous", "recurrent seizures", "antiseizure medication", "neurologist"),
    ("appendicitis", "digestive", "abdominal pain moving to the lower right, fever", "surgical removal of the appendix", "surgeon"),
    ("glaucoma", "eye", "gradual loss of peripheral vision", "eye drops that lower eye pressure", "ophthalmologist"),
    ("psoriasis", "skin", "red, scaly skin plaques", "topical treatments and phototherapy", "dermatologist"),
    ("chronic kidney disease", "urinary", "fatigue, swelling and changes in urination", "blood pressure control", "nephrologist"),
    ("influenza", "respiratory", "fever, muscle aches and cough", "rest, fluids and sometimes antivirals", "general practitioner"),
    ("hypoglycemia", "endocrine", "shakiness, sweating and confusion", "fast-acting sugar", "endocrinologist"),
]
_DRUGS = [
    ("amoxicillin", "a penicillin antibiotic", "bacterial infections"), ("ibuprofen", "an NSAID", "pain and inflammation"),
    ("metformin", "a biguanide", "type 2 diabetes"), ("lisinopril", "an ACE inhibitor", "high blood pressure"),
    ("atorvastatin", "a statin", "high cholesterol"), ("omeprazole", "a proton pump inhibitor", "acid reflux"),
    ("salbutamol", "a short-acting beta agonist", "asthma attacks"), ("levothyroxine", "a thyroid hormone", "hypothyroidism"),
    ("warfarin", "an anticoagulant", "preventing blood clots"), ("sertraline", "an SSRI antidepressant", "depression"),
    ("furosemide", "a loop diuretic", "fluid overload"), ("insulin", "a hormone", "diabetes"),
]


def _medical(rng: random.Random, i: int) -> dict:
    facts = []
    for c, organ, symptoms, treat, spec in _CONDITIONS:
        facts += [(f"What are common symptoms of {c}?", f"Common symptoms of {c} include {symptoms}."),
                  (f"Which organ system does {c} mainly affect?", f"{c.capitalize()} mainly affects the {organ} system."),
                  (f"What is a first-line treatment for {c}?", f"A first-line treatment for {c} is {treat}."),
                  (f"Which specialist usually manages {c}?", f"{c.capitalize()} is usually managed by a {spec}."),
                  (f"A patient reports {symptoms}. Which condition fits best: {c} or {rng.choice(_CONDITIONS)[0]}?",
                   f"The symptoms ({symptoms}) fit {c}.")]
    for d, cls, use in _DRUGS:
        facts += [(f"What drug class does {d} belong to?", f"{d.capitalize()} is {cls}."),
                  (f"What is {d} commonly used for?", f"{d.capitalize()} is commonly used for {use}.")]
    q, a = facts[i % len(facts)]
    lead = ["", "Answer briefly: ", "Medical question: ", "Patient education: "][(i // len(facts)) % 4]
    return {"prompt": lead + q, "response": a}


def _reasoning(rng: random.Random, i: int) -> dict:
    if i % 2 == 0:
        people = rng.sample(_NAMES, rng.randint(3, 5))
        adj, sup = rng.choice([("taller", "tallest"), ("older", "oldest"), ("faster", "fastest")])
        pairs = [f"{a} is {adj} than {b}." for a, b in zip(people, people[1:])]
        order = list(pairs)
        rng.shuffle(order)
        prompt = " ".join(order) + f" Who is the {sup}?"
        think = " ".join(pairs) + f" So the order is {' > '.join(people)}."
        return {"prompt": prompt, "response": f"<think>{think}</think>\nAnswer: {people[0]}", "answer": people[0]}
    start, step, n = rng.randint(1, 50), rng.randint(2, 12), rng.randint(4, 6)
    mult = rng.random() < 0.3
    seq = [start * (step ** j) if mult and step < 5 else start + step * j for j in range(n + 1)]
    rule = f"each term is {step} times the previous one" if mult and step < 5 else f"each term adds {step}"
    prompt = f"What number comes next in the sequence {', '.join(map(str, seq[:-1]))}?"
    return {"prompt": prompt, "response": f"<think>Check the differences: {rule}.</think>\nAnswer: {seq[-1]}",
            "answer": seq[-1]}


_WORDS = ["river", "lamp", "orange", "garden", "window", "cloud", "violin", "pepper", "forest", "candle",
          "harbor", "mirror", "sand", "whistle", "meadow", "anchor", "copper", "tulip", "lantern", "pebble"]
_ANTONYMS = [("hot", "cold"), ("early", "late"), ("happy", "sad"), ("light", "dark"), ("open", "closed"),
             ("strong", "weak"), ("quiet", "loud"), ("rich", "poor"), ("young", "old"), ("wide", "narrow")]


def _chat(rng: random.Random, i: int) -> dict:
    words = rng.sample(_WORDS, rng.randint(3, 6))
    kind = i % 5
    if kind == 0:
        return {"prompt": "Sort these words alphabetically: " + ", ".join(words), "response": ", ".join(sorted(words))}
    if kind == 1:
        s = " ".join(words)
        return {"prompt": f"Rewrite in uppercase: {s}", "response": s.upper()}
    if kind == 2:
        a, b = rng.choice(_ANTONYMS)
        return {"prompt": f"Give the opposite of the word '{a}' and use it in a sentence about a {words[0]}.",
                "response": f"The opposite of '{a}' is '{b}'. Example: The {words[0]} looked {b} today."}
    if kind == 3:
        name, other = rng.sample(_NAMES, 2)
        return {"prompt": f"Write a short thank-you note to {name} for the {words[0]} and the {words[1]}.",
                "response": f"Dear {name},\nThank you so much for the {words[0]} and the {words[1]}. "
                            f"They made my week.\nWarm regards,\n{other}"}
    s = " ".join(words)
    return {"prompt": f"Reverse the order of the words: {s}", "response": " ".join(reversed(words))}


GENERATORS: dict[str, Callable[[random.Random, int], dict]] = {
    "chat": _chat, "code": _code, "math": _math, "medical": _medical, "reasoning": _reasoning,
}


def generate(generator: str, rows: int, seed: int) -> list[dict]:
    """``rows`` rows of ``generator``, the same for the same ``(generator, rows, seed)``.

    Raises:
        ValueError: Unknown generator (the message lists the known ones).
    """
    if generator not in GENERATORS:
        raise ValueError(f"unknown generator {generator!r}; known: {sorted(GENERATORS)}")
    rng = random.Random(f"{generator}:{seed}")
    return [{"id": f"{generator}-{i}", **GENERATORS[generator](rng, i)} for i in range(rows)]


def _chat_pair(rng: random.Random, i: int) -> dict:
    """A chat instruction, its exact answer (chosen) and a plausible wrong one (rejected)."""
    row = _chat(rng, i)
    good = row["response"]
    words = good.split()
    wrong = [
        lambda: " ".join(reversed(words)) if len(words) > 1 else good + "?",  # wrong order
        lambda: good.lower() if good != good.lower() else good.upper(),        # wrong case
        lambda: "I cannot help with that.",                                    # unhelpful refusal
        lambda: " ".join(words[: max(1, len(words) // 2)]),                    # truncated
    ][i % 4]()
    if wrong == good:
        wrong = "I cannot help with that."
    return {"prompt": row["prompt"], "chosen": good, "rejected": wrong}


PAIR_GENERATORS: dict[str, Callable[[random.Random, int], dict]] = {"chat_pairs": _chat_pair}


def generate_pairs(generator: str, rows: int, seed: int) -> list[dict]:
    """``rows`` preference pairs (``prompt``, ``chosen``, ``rejected``) of ``generator``, deterministic.

    Raises:
        ValueError: Unknown pair generator (the message lists the known ones).
    """
    if generator not in PAIR_GENERATORS:
        raise ValueError(f"unknown preference generator {generator!r}; known: {sorted(PAIR_GENERATORS)}")
    rng = random.Random(f"{generator}:{seed}")
    return [{"id": f"{generator}-{i}", **PAIR_GENERATORS[generator](rng, i)} for i in range(rows)]


def write_generated(generator: str, rows: int, seed: int, out_dir: Path) -> Path:
    """Write the generator's rows as jsonl (once; the file name is a hash of the inputs)."""
    key = content_hash(generator, rows, seed, GENERATOR_VERSION)
    path = Path(out_dir) / generator / f"{key}.jsonl"
    if not path.is_file():
        lines = [json.dumps(r, ensure_ascii=False, sort_keys=True) for r in generate(generator, rows, seed)]
        atomic_write_text(path, "\n".join(lines) + "\n")
    return path
