"""Format adapters: one raw row of a known layout -> ``(system, prompt, response)``.

Each adapter names the reader that yields its rows (``records`` for row-per-record
files, ``keyed_json`` for a dict keyed by id, ``logiqa_lines`` for LogiQA's
8-line text) and a function from one raw row to an SFT triple. A field that is
missing or of the wrong type raises :class:`FormatError` naming the field; the
caller turns it into a quarantine row that also names the file and row.

Eval adapters (``EVAL_TEXT``) turn a benchmark item into the text whose n-grams
must not appear in training rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from brainstacks_core.data.text_cleaning import parse_conversation

Triple = tuple[str | None, str, str]  # (system, prompt, response)


class FormatError(ValueError):
    """A raw row does not fit its format; ``field`` names the offending field."""

    def __init__(self, field: str, message: str, value: Any = None, check: str = "format") -> None:
        super().__init__(f"field {field!r}: {message}")
        self.field = field
        self.value = value
        self.check = check


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)  # JSON null, or NaN from parquet/csv


def _text(row: dict, field: str, required: bool = True) -> str:
    if field not in row:
        if required:
            raise FormatError(field, "missing")
        return ""
    value = row[field]
    if _is_null(value):
        if required:
            raise FormatError(field, "is null", None)
        return ""
    if not isinstance(value, str):
        raise FormatError(field, f"expected a string, got {type(value).__name__}", value)
    return value


def alpaca(row: dict) -> Triple:
    """``instruction`` / optional ``input`` / ``output`` (Alpaca, CodeAlpaca, Medical Meadow)."""
    instruction = _text(row, "instruction")
    extra = _text(row, "input", required=False)
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    system = _text(row, "system", required=False) or None
    return system, prompt, _text(row, "output")


_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system", "observation": "user", "function_call": "assistant"}


def sharegpt(row: dict) -> Triple:
    """``conversations: [{from, value}]`` (optional ``system``; DPO files: ``chosen``)."""
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise FormatError("conversations", "expected a non-empty list of {from, value}", turns)
    parsed: list[tuple[str, str]] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise FormatError(f"conversations[{i}]", f"expected an object, got {type(turn).__name__}", turn)
        role = _SHAREGPT_ROLES.get(str(turn.get("from", "")).lower())
        if role is None:
            raise FormatError(f"conversations[{i}].from", "unknown role", turn.get("from"))
        parsed.append((role, _text(turn, "value")))
    system = _text(row, "system", required=False) or None
    system = "\n\n".join([s for s in [system] + [t for r, t in parsed if r == "system"] if s]) or None
    dialog = [(r, t) for r, t in parsed if r != "system"]
    if dialog and dialog[-1][0] == "user" and isinstance(row.get("chosen"), dict):
        dialog.append(("assistant", _text(row["chosen"], "value")))
    if len(dialog) < 2 or dialog[-1][0] != "assistant":
        raise FormatError("conversations", "needs a user turn followed by a final assistant turn")
    before = dialog[:-1]
    prompt = before[0][1] if len(before) == 1 else "\n\n".join(
        f"{'User' if r == 'user' else 'Assistant'}: {t}" for r, t in before)
    return system, prompt, dialog[-1][1]


def gsm8k(row: dict) -> Triple:
    """``question`` / ``answer`` (answer ends with ``#### <number>``)."""
    answer = _text(row, "answer")
    if "####" not in answer:
        raise FormatError("answer", "no '#### <number>' final answer", answer[-80:])
    return None, _text(row, "question"), answer


def pubmedqa(row: dict) -> Triple:
    """PubMedQA PQA-L entry: ``QUESTION``, ``CONTEXTS``, ``LONG_ANSWER``, ``final_decision``."""
    contexts = row.get("CONTEXTS")
    if not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts):
        raise FormatError("CONTEXTS", "expected a list of strings", contexts)
    decision = _text(row, "final_decision")
    if decision not in ("yes", "no", "maybe"):
        raise FormatError("final_decision", "expected yes/no/maybe", decision)
    prompt = "Context: " + " ".join(contexts) + "\n\nQuestion: " + _text(row, "QUESTION")
    return None, prompt, f"{_text(row, 'LONG_ANSWER')}\nAnswer: {decision}"


def _options(row: dict) -> dict[str, str]:
    options = row.get("options")
    if not isinstance(options, dict) or not options:
        raise FormatError("options", "expected a mapping letter -> text", options)
    for k, v in options.items():
        if not isinstance(v, str):
            raise FormatError(f"options.{k}", f"expected a string, got {type(v).__name__}", v)
    return options


def mcq(row: dict) -> Triple:
    """MedQA / MedMCQA / MMLU: ``question``, ``options`` {A..D}, ``answer_idx``."""
    options = _options(row)
    idx = _text(row, "answer_idx")
    if idx not in options:
        raise FormatError("answer_idx", f"not one of {sorted(options)}", idx)
    body = "\n".join(f"{k}. {v}" for k, v in sorted(options.items()))
    return None, f"{_text(row, 'question')}\n{body}", f"{idx}. {options[idx]}"


def logiqa(row: dict) -> Triple:
    """One LogiQA example assembled by the ``logiqa_lines`` reader."""
    options = _options(row)
    answer = _text(row, "answer").upper()
    if answer not in options:
        raise FormatError("answer", "expected one of a-d", row.get("answer"))
    body = "\n".join(f"{k}. {v}" for k, v in sorted(options.items()))
    prompt = f"{_text(row, 'context')}\n\nQuestion: {_text(row, 'question')}\n{body}"
    return None, prompt, f"Answer: {answer}. {options[answer]}"


def template_text(row: dict) -> Triple:
    """A whole templated conversation in ``text`` (guanaco: ``<s>[INST] q [/INST] a </s>``)."""
    text = _text(row, "text")
    conv = parse_conversation(text)
    if conv is None:
        raise FormatError("text", "no templated user/assistant turn found", text[:200])
    if conv.trailing:
        raise FormatError("text", f"conversation ends with {conv.trailing} unanswered turn(s) after the last "
                                  f"assistant reply", text[-200:])
    return conv.system, conv.prompt, conv.response


def prompt_response(row: dict) -> Triple:
    """Generic ``prompt`` / ``response`` / optional ``system`` (the project's generators)."""
    return _text(row, "system", required=False) or None, _text(row, "prompt"), _text(row, "response")


@dataclass(frozen=True)
class FormatAdapter:
    """A reader name, a row function, and the source's own names of prompt/response/system.

    ``fields`` maps ``prompt``/``response``/``system`` to the field a user sees in
    the file (``output`` for alpaca), so messages name what the user can fix.
    """

    reader: str
    to_triple: Callable[[dict], Triple]
    fields: dict = field(default_factory=lambda: {"prompt": "prompt", "response": "response", "system": "system"})


def _names(prompt: str, response: str, system: str = "system") -> dict:
    return {"prompt": prompt, "response": response, "system": system}


ADAPTERS: dict[str, FormatAdapter] = {
    "alpaca": FormatAdapter("records", alpaca, _names("instruction", "output")),
    "sharegpt": FormatAdapter("records", sharegpt, _names("conversations", "conversations")),
    "gsm8k": FormatAdapter("records", gsm8k, _names("question", "answer")),
    "pubmedqa": FormatAdapter("keyed_json", pubmedqa, _names("QUESTION", "LONG_ANSWER")),
    "mcq": FormatAdapter("records", mcq, _names("question", "answer_idx")),
    "logiqa": FormatAdapter("logiqa_lines", logiqa, _names("context", "answer")),
    "template_text": FormatAdapter("records", template_text, _names("text", "text", "text")),
    "prompt_response": FormatAdapter("records", prompt_response),
}


def get_adapter(name: str) -> FormatAdapter:
    """The adapter called ``name``; a clear error lists the known ones."""
    try:
        return ADAPTERS[name]
    except KeyError:
        raise ValueError(f"unknown format {name!r}; known: {sorted(ADAPTERS)}") from None


def _eval_gsm8k(row: dict) -> str:
    return f"{_text(row, 'question')}\n{_text(row, 'answer')}"


def _eval_mcq(row: dict) -> str:
    return _text(row, "question") + "\n" + "\n".join(_options(row).values())


def _eval_mc_query(row: dict) -> str:
    choices = row.get("choices") or []
    return _text(row, "query") + "\n" + "\n".join(c for c in choices if isinstance(c, str) and len(c) > 1)


def _eval_sft(row: dict) -> str:
    _, prompt, response = prompt_response(row)
    return f"{prompt}\n{response}"


EVAL_TEXT: dict[str, Callable[[dict], str]] = {
    "gsm8k": _eval_gsm8k,
    "mcq": _eval_mcq,
    "mc_query": _eval_mc_query,
    "generated": _eval_sft,
    "prompt_response": _eval_sft,
}
