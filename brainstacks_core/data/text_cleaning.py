"""Chat-template tokens: detect them, strip them, and parse templated conversations.

Training rows must not carry another model's chat-template tokens: the base model's
own template is applied at training time, and a second, foreign one teaches the
stack to emit ``[INST]`` or ``<|im_end|>`` as text.

Two entry points:

* :func:`strip_chat_tokens` removes every known template token from a text.
* :func:`parse_conversation` turns a whole templated conversation
  (``<s>[INST] q [/INST] a </s>``, ChatML, Llama-3, Gemma, ...) into
  ``(system, prompt, response)``; the pipeline prefers it over plain stripping.

The rule for ambiguous tokens (documented, and tested on the code data):
``<s>``, ``</s>``, ``<bos>`` and ``<eos>`` are also ordinary HTML or prose
(``"<s>struck</s>"`` in a code answer), so they are treated as template tokens
**only in a text that also contains an unambiguous template marker** (``[INST]``,
``<|im_start|>``, ``<start_of_turn>``, ...). A text without any unambiguous marker
is returned byte-identical, whatever it contains.

Code is content: a template token inside a fenced code block (```` ``` ````) or an
inline code span (`` `...` ``) is part of what the row teaches (a prompt-format
tutorial), so it is never detected, stripped or parsed as a turn marker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# (name, family, regex). Role-carrying markers capture the role in group "role".
TEMPLATE_PATTERNS: tuple[tuple[str, str, str], ...] = (
    ("llama2_inst", "llama2", r"\[INST\]"),
    ("llama2_inst_end", "llama2", r"\[/INST\]"),
    ("llama2_sys", "llama2", r"<<SYS>>"),
    ("llama2_sys_end", "llama2", r"<</SYS>>"),
    ("llama3_begin_of_text", "llama3", r"<\|begin_of_text\|>"),
    ("llama3_end_of_text", "llama3", r"<\|end_of_text\|>"),
    ("llama3_header", "llama3", r"<\|start_header_id\|>(?P<role>[^<|]{0,32})<\|end_header_id\|>"),
    ("llama3_eot", "llama3", r"<\|eot_id\|>"),
    ("llama3_eom", "llama3", r"<\|eom_id\|>"),
    ("llama3_python_tag", "llama3", r"<\|python_tag\|>"),
    ("chatml_start", "chatml", r"<\|im_start\|>(?P<role>[A-Za-z_]{0,32})"),
    ("chatml_end", "chatml", r"<\|im_end\|>"),
    ("gemma_start", "gemma", r"<start_of_turn>(?P<role>[A-Za-z_]{0,32})"),
    ("gemma_end", "gemma", r"<end_of_turn>"),
    ("mistral_system", "mistral", r"\[SYSTEM_PROMPT\]"),
    ("mistral_system_end", "mistral", r"\[/SYSTEM_PROMPT\]"),
    ("mistral_tools", "mistral", r"\[/?(?:AVAILABLE_TOOLS|TOOL_CALLS|TOOL_RESULTS)\]"),
    ("phi3_role", "phi3", r"<\|(?P<role>user|assistant|system)\|>"),
    ("phi3_end", "phi3", r"<\|end\|>"),
    ("openassistant_role", "openassistant", r"<\|(?P<role>prompter)\|>"),
    ("endoftext", "gpt", r"<\|endoftext\|>"),
    ("deepseek_role", "deepseek", r"<｜(?P<role>User|Assistant)｜>"),
    ("deepseek_bos", "deepseek", r"<｜begin▁of▁sentence｜>"),
    ("deepseek_eos", "deepseek", r"<｜end▁of▁sentence｜>"),
    ("deepseek_eot", "deepseek", r"<\|EOT\|>"),
    ("command_r_turn", "command_r", r"<\|START_OF_TURN_TOKEN\|><\|(?P<role>USER|CHATBOT|SYSTEM)_TOKEN\|>"),
    ("command_r_end", "command_r", r"<\|END_OF_TURN_TOKEN\|>"),
    ("harmony_start", "harmony", r"<\|start\|>(?P<role>[a-z]{0,16})(?:<\|channel\|>[a-z]{0,16})?<\|message\|>"),
    ("harmony_end", "harmony", r"<\|(?:end|return|call)\|>"),
)

# Ambiguous tokens: stripped only when an unambiguous marker is present (see module doc).
AMBIGUOUS_PATTERNS: tuple[tuple[str, str], ...] = (
    ("bos_s", r"<s>"),
    ("eos_s", r"</s>"),
    ("gemma_bos", r"<bos>"),
    ("gemma_eos", r"<eos>"),
)

_MARKERS = re.compile("|".join(f"(?:{rx})" for _, _, rx in TEMPLATE_PATTERNS).replace("?P<role>", ""))
_ALL = re.compile(
    "|".join(f"(?:{rx})" for _, _, rx in TEMPLATE_PATTERNS).replace("?P<role>", "")
    + "|"
    + "|".join(f"(?:{rx})" for _, rx in AMBIGUOUS_PATTERNS)
)
_PER_PATTERN = [(name, re.compile(rx)) for name, _, rx in TEMPLATE_PATTERNS]
# Fenced blocks (an unclosed fence runs to the end) and inline code spans.
_CODE = re.compile(r"```.*?(?:```|\Z)|~~~.*?(?:~~~|\Z)|`[^`\n]+`", re.DOTALL)
# Unambiguous template boundaries: the end of one turn followed by the start of the next (or by the end of
# the text). A fence left open never protects one: the turn ended there, so the code did too.
_BOUNDARY = re.compile(
    r"</s>[ \t]*(?:<s>)?[ \t]*(?:\[INST\]|### Human:|### Assistant:)|</s>\s*(?:<s>)?\s*\Z"
    r"|<\|im_end\|>\s*(?:<\|im_start\|>|\Z)|<end_of_turn>\s*(?:<start_of_turn>|\Z)"
    r"|<\|eot_id\|>\s*(?:<\|start_header_id\|>|\Z)")
# DeepSeek (v1 / Coder) without role tokens: plain "User:" / "Assistant:" labels at line starts.
_PLAIN_ROLES = re.compile(r"(?m)^[ \t]*(?P<role>User|Assistant|System)[ \t]*:[ \t]?")


_FAMILIES = sorted({fam for _, fam, _ in TEMPLATE_PATTERNS})
_BY_FAMILY = re.compile("|".join(
    f"(?P<{fam}>" + "|".join(rx for _, f, rx in TEMPLATE_PATTERNS if f == fam).replace("?P<role>", "") + ")"
    for fam in _FAMILIES))


def _code_spans(text: str) -> list[tuple[int, int]]:
    """Code spans of ``text`` that are really code.

    A span holding a marker of the text's own template (a family also found
    outside code) is not code: it is a fence left open across a turn boundary
    (``... ``` [/INST] ...``), so the template's structure wins there.
    """
    if "`" not in text and "~~~" not in text:
        return []
    spans = _raw_code_spans(text)
    for _ in range(3):
        marks = [(m.start(), m.lastgroup) for m in _BY_FAMILY.finditer(text)]
        outer = {fam for pos, fam in marks if _outside(spans, pos)}
        keep = [(a, b) for a, b in spans if not any(a <= pos < b and fam in outer for pos, fam in marks)]
        if len(keep) == len(spans):
            break
        spans = keep
    return spans


def _raw_code_spans(text: str) -> list[tuple[int, int]]:
    """Fences and inline spans; an unclosed fence ends at the first template boundary inside it."""
    spans, pos = [], 0
    while (m := _CODE.search(text, pos)) is not None:
        a, b = m.span()
        body = text[a:b]
        closed = len(body) >= 6 and body[-3:] in ("```", "~~~") or not body.startswith(("```", "~~~"))
        if not closed and (cut := _BOUNDARY.search(text, a + 3, b)) is not None:
            b = cut.start()  # the fence never closed: the turn boundary ends it
        spans.append((a, b))
        pos = max(b, a + 1)
    return spans


def _outside(spans: list[tuple[int, int]], pos: int) -> bool:
    return not any(a <= pos < b for a, b in spans)


def _sub_outside_code(rx: re.Pattern[str], repl: str, text: str) -> str:
    """``rx.sub(repl, text)`` on the parts of ``text`` outside code spans."""
    spans = _code_spans(text)
    if not spans:
        return rx.sub(repl, text)
    out, last = [], 0
    for a, b in spans:
        out.append(rx.sub(repl, text[last:a]))
        out.append(text[a:b])
        last = b
    out.append(rx.sub(repl, text[last:]))
    return "".join(out)
_BLANK_RUNS = re.compile(r"[ \t]*\n[ \t]*\n(?:[ \t]*\n)+")

# Markers that open a turn, mapped to the role they open ("" = role captured).
_TURN_OPENERS = re.compile(
    r"(?P<inst>\[INST\])|(?P<inst_end>\[/INST\])|(?P<sys><<SYS>>)|(?P<sys_end><</SYS>>)"
    r"|(?P<msys>\[SYSTEM_PROMPT\])|(?P<msys_end>\[/SYSTEM_PROMPT\])"
    r"|<\|start_header_id\|>(?P<r1>[^<|]{0,32})<\|end_header_id\|>"
    r"|<\|im_start\|>(?P<r2>[A-Za-z_]{0,32})"
    r"|<start_of_turn>(?P<r3>[A-Za-z_]{0,32})"
    r"|<\|(?P<r4>user|assistant|system|prompter)\|>"
    r"|<｜(?P<r5>User|Assistant)｜>"
    r"|<\|START_OF_TURN_TOKEN\|><\|(?P<r6>USER|CHATBOT|SYSTEM)_TOKEN\|>"
    r"|<\|start\|>(?P<r7>[a-z]{0,16})(?:<\|channel\|>[a-z]{0,16})?<\|message\|>"
)
_ROLE_ALIASES = {
    "user": "user", "human": "user", "prompter": "user",
    "assistant": "assistant", "model": "assistant", "chatbot": "assistant", "gpt": "assistant",
    "system": "system", "developer": "system",
}


@dataclass(frozen=True)
class Conversation:
    """A templated conversation reduced to one SFT record.

    Attributes:
        system: The system prompt, or None.
        prompt: Every turn before the last assistant turn (earlier turns labelled).
        response: The last assistant turn.
        trailing: turns after the last assistant turn (an unanswered user turn);
            they are not in prompt/response, so callers must not drop them silently.
    """

    system: str | None
    prompt: str
    response: str
    trailing: int = 0


def has_chat_tokens(text: str) -> bool:
    """True when ``text`` holds an unambiguous template marker or turn boundary outside code.

    A boundary (``</s><s>[INST]``, ``</s><s>### Human:``, ``<|im_end|>\\n<|im_start|>``, a final ``</s>``)
    counts even though its ``</s>``/``<s>`` are ambiguous alone, and a fence that never closes
    does not hide it: this is also the ``no_chat_tokens`` contract check, so it catches what a
    strip missed.
    """
    m = _MARKERS.search(text)
    b = _BOUNDARY.search(text)
    if m is None and b is None:
        return False
    spans = _code_spans(text)
    return not spans or any(_outside(spans, x.start())
                            for rx in (_MARKERS, _BOUNDARY) for x in rx.finditer(text))


def find_chat_tokens(text: str) -> list[str]:
    """Names of the template patterns found in ``text`` outside code (for reports and tests)."""
    spans = _code_spans(text)
    return [name for name, rx in _PER_PATTERN if any(_outside(spans, m.start()) for m in rx.finditer(text))]


def strip_chat_tokens(text: str) -> str:
    """Remove chat-template tokens from ``text``.

    A text without an unambiguous marker comes back unchanged (the same object,
    byte-identical), so ``<s>`` inside code or HTML is never touched. Otherwise
    every template token (role headers included) is removed, runs of blank lines
    left behind are collapsed, and the ends are trimmed.

    Args:
        text: Any text.

    Returns:
        The text without template tokens.
    """
    if not has_chat_tokens(text):
        return text
    out = _sub_outside_code(_ALL, "\n", text)
    out = _sub_outside_code(_BLANK_RUNS, "\n\n", out)
    return "\n".join(line.rstrip() for line in out.strip().split("\n"))


def _role_of(match: re.Match[str]) -> str:
    kind = match.lastgroup
    if kind == "role":  # _PLAIN_ROLES
        return match.group("role").lower()
    if kind in ("inst", "sys_end", "msys_end"):
        return "user"
    if kind == "inst_end":
        return "assistant"
    if kind in ("sys", "msys"):
        return "system"
    role = (match.group(kind) or "").strip().lower()
    return _ROLE_ALIASES.get(role, role or "user")


def parse_conversation(text: str) -> Conversation | None:
    """Turn a whole templated conversation into ``(system, prompt, response)``.

    Turns are cut at role markers; end-of-turn and BOS/EOS tokens are stripped from
    each turn. The last assistant turn is the response; earlier user/assistant turns
    form the prompt (labelled ``User:``/``Assistant:`` when there is more than one).

    Args:
        text: A templated text.

    Returns:
        The conversation, or None when ``text`` has no template marker or no
        non-empty user and assistant turn (the caller then strips tokens instead).
    """
    if not has_chat_tokens(text):
        return None
    turns: list[list[str]] = []  # [role, text]
    spans = _code_spans(text)
    matches = [m for m in _TURN_OPENERS.finditer(text) if _outside(spans, m.start())]
    if not matches and "｜" in text:  # DeepSeek v1/Coder: <｜begin▁of▁sentence｜>User: q\n\nAssistant: a<｜end▁of▁sentence｜>
        body = strip_chat_tokens_unconditional(text)
        matches = [m for m in _PLAIN_ROLES.finditer(body) if _outside(_code_spans(body), m.start())]
        text = body
    head = strip_chat_tokens_unconditional(text[:matches[0].start()]) if matches else ""
    if head and "｜" in text[:matches[0].start()]:  # DeepSeek V3/R1: <｜begin▁of▁sentence｜>{system}<｜User｜>...
        turns.append(["system", head])
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = strip_chat_tokens_unconditional(text[m.end():end])
        if not body:
            continue
        role = _role_of(m)
        if turns and turns[-1][0] == role:
            turns[-1][1] += "\n\n" + body
        else:
            turns.append([role, body])
    system = "\n\n".join(t[1] for t in turns if t[0] == "system") or None
    dialog = [t for t in turns if t[0] in ("user", "assistant")]
    last = max((i for i, t in enumerate(dialog) if t[0] == "assistant"), default=None)
    if last is None or not any(t[0] == "user" for t in dialog[:last]):
        return None
    before = dialog[:last]
    if len(before) == 1:
        prompt = before[0][1]
    else:
        prompt = "\n\n".join(f"{'User' if r == 'user' else 'Assistant'}: {t}" for r, t in before)
    return Conversation(system=system, prompt=prompt, response=dialog[last][1], trailing=len(dialog) - last - 1)


def strip_chat_tokens_unconditional(text: str) -> str:
    """Remove every template token, ambiguous ones included (inside a known conversation); code is kept."""
    out = _sub_outside_code(_ALL, "\n", text)
    out = _sub_outside_code(_BLANK_RUNS, "\n\n", out)
    return out.strip()
