"""Benchmark files -> the document schema of the harness's own task YAMLs (jsonl, cached).

The files in ``../shared/data`` come in several layouts (bz2 text, 8-line text,
llm-foundry MC jsonl, MedAgentsBench jsonl, TruthfulQA's answer->label dicts).
Each converter here writes the documents in the schema of the Hugging Face
dataset the harness's YAML was written for (``Rowan/hellaswag``,
``allenai/ai2_arc``, ``truthfulqa/truthful_qa``, ``cais/mmlu``,
``GBaker/MedQA-USMLE-4-options-hf``, ``openlifescienceai/medmcqa``,
``EleutherAI/logiqa``, ``openai/gsm8k``), so the harness's prompt templates,
``process_docs`` and metrics apply unchanged. Known differences from the hub
copies: HellaSwag's file joins ``ctx_a``/``ctx_b`` (so ``ctx_b`` is not
capitalised); ARC comes with its question only (no choice labels: A-D are
assigned); MedMCQA is a 2,816-item subset of its dev set.

A converted file is written once under ``<store>/eval/data/`` with a name that
hashes the source bytes and :data:`CONVERTER_VERSION`; that hash is the task's
data version.
"""

from __future__ import annotations

import bz2
import json
import logging
import random
from pathlib import Path
from typing import Callable, Iterator

from brainstacks_core.files import atomic_write_text, sha256_file
from brainstacks_core.lineage.versioning import content_hash

log = logging.getLogger(__name__)

CONVERTER_VERSION = "1"
MMLU_MEDICAL = ("anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics",
                "professional_medicine")
_LETTERS = "ABCDEFGHIJ"


class BenchmarkFileError(ValueError):
    """A benchmark file that cannot be read as its task expects: names the file, the line and the field."""


class _Row(dict):
    """One parsed JSONL line that names its file and line when a field is missing."""

    def __init__(self, data: dict, where: str) -> None:
        super().__init__(data)
        self.where = where

    def __missing__(self, key: str):
        raise BenchmarkFileError(f"{self.where}: field {key!r} missing (fields: {sorted(self)})")


def _jsonl(path: Path) -> Iterator[dict]:
    """The JSON objects of a JSONL file; a broken line raises naming the file and the line."""
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BenchmarkFileError(f"{path}:{n}: not a JSON object: {exc.msg} (column {exc.colno})") from exc
            if not isinstance(obj, dict):
                raise BenchmarkFileError(f"{path}:{n}: a JSON {type(obj).__name__}, not an object")
            yield _Row(obj, f"{path}:{n}")


def hellaswag(path: Path) -> list[dict]:
    """6 lines per task: ``activity_label: ctx``, label, 4 endings -> Rowan/hellaswag rows."""
    lines = bz2.decompress(path.read_bytes()).decode("utf-8").split("\n")
    out = []
    for i in range(0, len(lines) - 5, 6):
        head, label, endings = lines[i], lines[i + 1].strip(), lines[i + 2:i + 6]
        activity, _, ctx = head.partition(": ")
        out.append({"ind": i // 6, "activity_label": activity, "ctx_a": ctx, "ctx_b": "", "ctx": ctx,
                    "endings": endings, "label": label})
    return out


def arc(path: Path) -> list[dict]:
    """llm-foundry ``{query: 'Question: ...', choices, gold}`` -> allenai/ai2_arc rows."""
    out = []
    for i, r in enumerate(_jsonl(path)):
        q = r["query"].removeprefix("Question: ").removesuffix("\nAnswer:").strip()
        labels = list(_LETTERS[:len(r["choices"])])
        out.append({"id": str(i), "question": q, "choices": {"text": r["choices"], "label": labels},
                    "answerKey": labels[int(r["gold"])]})
    return out


def truthfulqa(path: Path) -> list[dict]:
    """``mc_task.json`` (answer -> 0/1 dicts) -> truthfulqa/truthful_qa ``multiple_choice`` rows."""
    def targets(d: dict) -> dict:
        return {"choices": list(d), "labels": [int(v) for v in d.values()]}

    return [{"question": r["question"], "mc1_targets": targets(r["mc1_targets"]),
             "mc2_targets": targets(r["mc2_targets"])} for r in json.loads(path.read_text(encoding="utf-8"))]


def mmlu_subject(subject: str) -> Callable[[Path], list[dict]]:
    """MedAgentsBench MMLU rows of one subject -> cais/mmlu rows."""
    def convert(path: Path) -> list[dict]:
        return [{"question": r["question"], "subject": subject, "choices": [r["options"][k] for k in "ABCD"],
                 "answer": "ABCD".index(r["answer_idx"])} for r in _jsonl(path) if r["subject"] == subject]

    return convert


def medqa(path: Path) -> list[dict]:
    """MedAgentsBench MedQA (options A-D) -> GBaker/MedQA-USMLE-4-options-hf rows."""
    return [{"id": str(r.get("realidx", i)), "sent1": r["question"],
             **{f"ending{j}": r["options"][k] for j, k in enumerate("ABCD")}, "label": "ABCD".index(r["answer_idx"])}
            for i, r in enumerate(_jsonl(path))]


def medmcqa(path: Path) -> list[dict]:
    """MedAgentsBench MedMCQA -> openlifescienceai/medmcqa rows (``cop`` 0-3)."""
    return [{"id": str(r["realidx"]), "question": r["question"],
             **{f"op{c}": r["options"][k] for c, k in zip("abcd", "ABCD")}, "cop": "ABCD".index(r["answer_idx"])}
            for r in _jsonl(path)]


def logiqa(path: Path) -> list[dict]:
    """LogiQA 8-line text (blank, answer, context, question, 4 options) -> EleutherAI/logiqa rows."""
    lines = path.read_text(encoding="utf-8").split("\n")
    out = []
    for i in range(0, len(lines) - 7, 8):
        block = lines[i:i + 8]
        options = [o.strip()[2:].strip() if o.strip()[1:2] == "." else o.strip() for o in block[4:8]]
        out.append({"label": block[1].strip().lower(), "context": block[2].strip(), "question": block[3].strip(),
                    "options": options})
    return out


def gsm8k(path: Path) -> list[dict]:
    """openai/grade-school-math jsonl is already the openai/gsm8k schema."""
    return list(_jsonl(path))


# task name -> {split: (file under data_dir, converter)}
SHARED_SOURCES: dict[str, dict[str, tuple[str, Callable[[Path], list[dict]]]]] = {
    "hellaswag": {"validation": ("hellaswag/hellaswag_val_full.txt.bz2", hellaswag)},
    "arc_easy": {"test": ("arc/arc_easy.jsonl", arc)},
    "arc_challenge": {"test": ("arc/arc_challenge.jsonl", arc)},
    "truthfulqa_mc1": {"validation": ("truthfulqa/mc_task.json", truthfulqa)},
    "truthfulqa_mc2": {"validation": ("truthfulqa/mc_task.json", truthfulqa)},
    "medqa_4options": {"test": ("medqa/test.jsonl", medqa)},
    "medmcqa": {"validation": ("medmcqa/test.jsonl", medmcqa)},
    "logiqa": {"test": ("logiqa/Test.txt", logiqa)},
    "gsm8k": {"test": ("gsm8k/test.jsonl", gsm8k), "train": ("gsm8k/train.jsonl", gsm8k)},
    **{f"mmlu_{s}": {"test": ("mmlu_medical/test.jsonl", mmlu_subject(s))} for s in MMLU_MEDICAL},
}


def materialize(name: str, split: str, data_dir: Path, out_dir: Path) -> tuple[Path, str]:
    """Convert one split of a task's source file once; returns (jsonl path, data version).

    Raises:
        FileNotFoundError: the source file is absent (names the file and the key to set).
        BenchmarkFileError: the file is broken (names the file, and the line and field where known).
            Nothing is converted or cached then: a benchmark never silently loses items.
    """
    rel, convert = SHARED_SOURCES[name][split]
    src = data_dir / rel
    if not src.is_file():
        raise FileNotFoundError(f"eval task {name!r} needs {src}; set eval.data_dir to the folder of the "
                                f"benchmark files (see ../shared/data/MANIFEST.md)")
    version = content_hash(sha256_file(src), name, split, CONVERTER_VERSION)
    out = out_dir / f"{name}-{split}-{version}.jsonl"
    if not out.exists():
        try:
            rows = convert(src)
        except BenchmarkFileError:
            raise
        except (KeyError, IndexError, TypeError, ValueError, UnicodeDecodeError, OSError) as exc:
            raise BenchmarkFileError(f"{src}: cannot be read as eval task {name!r} ({type(exc).__name__}: "
                                     f"{exc})") from exc
        atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        log.info("eval data %s/%s: %d docs from %s -> %s", name, split, len(rows), src, out)
    return out, version


# ---------------------------------------------------------------- generated demo tasks
def demo_docs(task: str, n: int, seed: int) -> list[dict]:
    """Generated items for the offline demo, from the data generators on another seed.

    ``demo_math`` / ``demo_medical`` / ``demo_reasoning`` are 4-way multiple choice
    (``question``, ``choices``, ``gold``); ``demo_gsm8k`` has GSM8K's
    ``question`` / ``answer`` (ending ``#### N``). The generators' small fact
    tables mean items may repeat training rows: the demo checks machinery, not
    generalisation.
    """
    from brainstacks_core.data.generators import generate

    rng = random.Random(seed)
    if task == "demo_gsm8k":
        return [{"question": r["prompt"], "answer": r["response"]} for r in generate("math", n, seed)]
    gen = task.removeprefix("demo_")
    rows = generate(gen, n + 8, seed)
    docs = []
    for i, r in enumerate(rows[:n]):
        if "answer" in r and isinstance(r["answer"], int):
            right = r["answer"]
            wrong = rng.sample([x for x in range(max(0, right - 9), right + 10) if x != right], 3)
            texts = [str(x) for x in [right, *wrong]]
        else:
            right = str(r.get("answer", r["response"]))
            pool = list(dict.fromkeys(str(o.get("answer", o["response"])) for o in rows if o is not r))
            texts = [right, *rng.sample([p for p in pool if p != right], 3)]
        order = list(range(4))
        rng.shuffle(order)
        docs.append({"question": r["prompt"], "choices": [texts[j] for j in order], "gold": order.index(0)})
    return docs


DEMO_TASKS = ("demo_math", "demo_medical", "demo_reasoning", "demo_gsm8k")


def materialize_demo(task: str, n: int, seed: int, out_dir: Path) -> tuple[Path, str]:
    """Write a generated demo task once; returns (jsonl path, data version)."""
    from brainstacks_core.data.generators import GENERATOR_VERSION

    version = content_hash(task, n, seed, GENERATOR_VERSION, CONVERTER_VERSION)
    out = out_dir / f"{task}-{version}.jsonl"
    if not out.exists():
        atomic_write_text(out, "".join(json.dumps(d) + "\n" for d in demo_docs(task, n, seed)))
    return out, version
