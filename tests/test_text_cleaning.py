"""strip_chat_tokens and parse_conversation: every template family, and byte identity."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from brainstacks_core import strip_chat_tokens
from brainstacks_core.data.text_cleaning import TEMPLATE_PATTERNS, find_chat_tokens, has_chat_tokens, parse_conversation

SHARED = Path(os.environ.get("BRAINSTACKS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

# One example per pattern name: text with the token -> the pattern must be found and removed.
EXAMPLES = {
    "llama2_inst": "[INST] hi", "llama2_inst_end": "hi [/INST] yo", "llama2_sys": "<<SYS>> s",
    "llama2_sys_end": "s <</SYS>> u", "llama3_begin_of_text": "<|begin_of_text|>hi",
    "llama3_end_of_text": "hi<|end_of_text|>", "llama3_header": "<|start_header_id|>user<|end_header_id|>\n\nhi",
    "llama3_eot": "hi<|eot_id|>", "llama3_eom": "hi<|eom_id|>", "llama3_python_tag": "<|python_tag|>hi",
    "chatml_start": "<|im_start|>user\nhi", "chatml_end": "hi<|im_end|>",
    "gemma_start": "<start_of_turn>model\nhi", "gemma_end": "hi<end_of_turn>",
    "mistral_system": "[SYSTEM_PROMPT]be kind", "mistral_system_end": "be kind[/SYSTEM_PROMPT]",
    "mistral_tools": "[TOOL_CALLS] hi", "phi3_role": "<|user|>\nhi", "phi3_end": "hi<|end|>",
    "openassistant_role": "<|prompter|>hi", "endoftext": "hi<|endoftext|>", "deepseek_role": "<｜User｜>hi",
    "deepseek_bos": "<｜begin▁of▁sentence｜>hi", "deepseek_eos": "hi<｜end▁of▁sentence｜>", "deepseek_eot": "hi<|EOT|>",
    "command_r_turn": "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>hi", "command_r_end": "hi<|END_OF_TURN_TOKEN|>",
    "harmony_start": "<|start|>user<|message|>hi", "harmony_end": "hi<|end|>",
}


def test_at_least_twenty_patterns_all_exemplified():
    names = [n for n, _, _ in TEMPLATE_PATTERNS]
    assert len(names) >= 20
    assert set(names) == set(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_each_pattern_is_found_and_stripped(name):
    text = EXAMPLES[name]
    assert name in find_chat_tokens(text)
    out = strip_chat_tokens(text)
    assert not has_chat_tokens(out), out
    content = {"llama2_inst_end": "hi yo", "llama2_sys": "s", "llama2_sys_end": "s u",
               "mistral_system": "be kind", "mistral_system_end": "be kind"}.get(name, "hi")
    assert " ".join(out.split()) == content, out  # every content word survives, nothing else does


def test_ambiguous_tokens_are_stripped_across_a_templated_row():
    """A row templated in one field has its </s> removed from the other field too."""
    import pandas as pd

    from brainstacks_core.data.steps import strip_records

    row = {"record_id": "x", "domain": "chat", "source_uri": "file://f.json", "source_version": "v",
           "source_row_key": "0", "prompt": "<s>[INST] What is 2+2? [/INST]", "response": "4 </s>", "system": None}
    code = dict(row, record_id="y", prompt="Write HTML with <s>strike</s>.", response="<p><s>old</s></p>")
    out, quarantined = strip_records(pd.DataFrame([row, code]), max_chars=1000)
    assert quarantined.empty
    assert out.loc[0, "prompt"] == "What is 2+2?" and out.loc[0, "response"] == "4"
    assert out.loc[1, "prompt"] == code["prompt"] and out.loc[1, "response"] == code["response"]


@pytest.mark.parametrize("text,expected", [
    ("<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWhat is 2+2? [/INST] 4 </s>", ("Be brief.", "What is 2+2?", "4")),
    ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|><|start_header_id|>user<|end_header_id|>"
     "\n\nQ<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nA<|eot_id|>", ("S", "Q", "A")),
    ("<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\nA<|im_end|>", ("S", "Q", "A")),
    ("<bos><start_of_turn>user\nQ<end_of_turn>\n<start_of_turn>model\nA<end_of_turn>", (None, "Q", "A")),
    ("<|user|>\nQ<|end|>\n<|assistant|>\nA<|end|>", (None, "Q", "A")),
    ("<|system|>\nS</s>\n<|user|>\nQ</s>\n<|assistant|>\nA</s>", ("S", "Q", "A")),  # Zephyr / Tulu
    ("<｜begin▁of▁sentence｜><｜User｜>Q<｜Assistant｜>A<｜end▁of▁sentence｜>", (None, "Q", "A")),  # DeepSeek
    ("<s>[SYSTEM_PROMPT]S[/SYSTEM_PROMPT][INST]Q[/INST]A</s>", ("S", "Q", "A")),  # Mistral v7
    ("<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Q<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>A"
     "<|END_OF_TURN_TOKEN|>", (None, "Q", "A")),
])
def test_whole_conversations_become_prompt_response(text, expected):
    conv = parse_conversation(text)
    assert conv is not None
    assert (conv.system, conv.prompt, conv.response) == expected


def test_multi_turn_keeps_earlier_turns_in_prompt():
    conv = parse_conversation("<s>[INST] a [/INST] b </s><s>[INST] c [/INST] d </s>")
    assert conv.prompt == "User: a\n\nAssistant: b\n\nUser: c" and conv.response == "d"


def test_only_tokens_is_not_a_conversation_and_strips_to_empty():
    assert parse_conversation("<s>[INST][/INST]</s>") is None
    assert strip_chat_tokens("<|im_start|>user\n<|im_end|>").strip() == ""


def test_text_without_markers_is_byte_identical_even_with_html_s():
    for text in ['html = "<s>old price</s> new"', "<s>", "plain text\r\n  with spaces  ", "<bos> is a word here"]:
        assert strip_chat_tokens(text) is text


@pytest.mark.shared_data
def test_code_data_is_untouched():
    path = SHARED / "codealpaca" / "code_alpaca_2k.json"
    if not path.is_file():
        pytest.skip(f"shared data absent: {path}")
    rows = json.loads(path.read_text(encoding="utf-8"))
    texts = [r[k] for r in rows for k in ("instruction", "input", "output")]
    changed = [t for t in texts if strip_chat_tokens(t) != t]
    assert changed == []


@pytest.mark.shared_data
def test_guanaco_rows_all_parse():
    import pandas as pd

    path = SHARED / "guanaco_llama2_1k" / "train-00000-of-00001-9ad84bb9cf65a42f.parquet"
    if not path.is_file():
        pytest.skip(f"shared data absent: {path}")
    texts = pd.read_parquet(path)["text"].tolist()
    convs = [parse_conversation(t) for t in texts]
    assert sum(c is not None for c in convs) >= 0.99 * len(texts)
    assert not any(has_chat_tokens(c.prompt + c.response) or "<s>" in c.response for c in convs if c)
    for i in (284, 434, 943):  # unclosed code fences before a turn boundary kept Llama-2 markers
        c = convs[i]
        assert "</s>" not in c.prompt + c.response and "<s>" not in c.prompt + c.response, i
        assert not has_chat_tokens(strip_chat_tokens(texts[i])), i


def test_unanswered_trailing_turn_is_reported_not_dropped():
    from brainstacks_core.data.formats import FormatError, template_text

    text = "<s>[INST] Q1 [/INST] A1 </s><s>[INST] Q2 unanswered [/INST]"
    conv = parse_conversation(text)
    assert conv.response == "A1" and conv.trailing == 1
    with pytest.raises(FormatError, match="unanswered"):
        template_text({"text": text})
    assert parse_conversation("<s>[INST] Q [/INST] A </s>").trailing == 0


def test_llama31_tool_turn_end_token_is_stripped():
    text = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWeather in Oslo?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n<|python_tag|>weather.call(city=\"Oslo\")<|eom_id|>"
            "<|start_header_id|>ipython<|end_header_id|>\n\n{\"temp\": 3}<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\nIt is 3 degrees.<|eot_id|>")
    conv = parse_conversation(text)
    assert conv is not None and conv.response == "It is 3 degrees."
    assert "<|eom_id|>" not in conv.prompt and "<|python_tag|>" not in conv.prompt
    assert 'weather.call(city="Oslo")' in conv.prompt
    assert strip_chat_tokens("done<|eom_id|>") == "done"


@pytest.mark.parametrize("text,expected", [
    # DeepSeek LLM / Coder v1: full-width BOS/EOS, plain-text role labels
    ("<｜begin▁of▁sentence｜>User: What is 2+2?\n\nAssistant: 4<｜end▁of▁sentence｜>", (None, "What is 2+2?", "4")),
    # DeepSeek V3 / R1: the system prompt sits between BOS and the first <｜User｜>
    ("<｜begin▁of▁sentence｜>Be brief.<｜User｜>Capital of France?<｜Assistant｜>Paris<｜end▁of▁sentence｜>",
     ("Be brief.", "Capital of France?", "Paris")),
])
def test_deepseek_full_width_rows_parse(text, expected):
    from brainstacks_core.data.formats import template_text

    assert template_text({"text": text}) == expected


CHATML_EXAMPLE = "```\n<|im_start|>system\nYou are a pirate.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n```"


def test_template_tokens_in_code_blocks_are_content():
    """A prompt-format tutorial keeps its example: nothing deleted, nothing becomes the system prompt."""
    import pandas as pd

    from brainstacks_core.data.steps import strip_records

    answer = f"ChatML looks like this:\n{CHATML_EXAMPLE}\nand `<|im_end|>` ends a turn."
    assert not has_chat_tokens(answer) and strip_chat_tokens(answer) is answer
    assert parse_conversation(answer) is None
    templated = f"<s>[INST] Show me ChatML [/INST] {answer} </s>"
    conv = parse_conversation(templated)
    assert conv.system is None and conv.prompt == "Show me ChatML" and conv.response == answer
    row = {"record_id": "x", "domain": "chat", "source_uri": "local:f.json", "source_version": "v",
           "source_row_key": "element:0", "prompt": "How do I format a ChatML prompt?", "response": answer,
           "system": None}
    out, q = strip_records(pd.DataFrame([row]), max_chars=10_000)
    assert q.empty and out.loc[0, "response"] == answer and out.loc[0, "system"] is None


def test_a_fence_left_open_across_turns_does_not_hide_the_template():
    text = "<s>[INST] My plan:\n```\n##\n# [/INST] Nice plan. </s>"
    conv = parse_conversation(text)
    assert conv is not None and conv.response == "Nice plan." and "[/INST]" not in conv.prompt


@pytest.mark.parametrize("text", [
    "<s>[INST] Plan:\n```\n##\n# [/INST] ok ``` </s><s>[INST] more? [/INST] sure </s>",
    "### Human: show code\n```python\nprint(1) </s><s>### Human: thanks ### Assistant: welcome",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n```js\nlet a = 1<|im_end|>\n<|im_start|>user\nok",
    "<s>[INST] code please [/INST] ```\nfunction f() </s>",
])
def test_an_unclosed_fence_does_not_protect_a_turn_boundary(text):
    out = strip_chat_tokens(text)
    assert has_chat_tokens(text)  # the contract check sees the boundary even behind the open fence
    assert "</s>" not in out and "<s>" not in out and "<|im_end|>" not in out and "<|im_start|>" not in out, out
    assert not has_chat_tokens(out)


def test_a_closed_fence_still_protects_literal_markers_and_the_contract_catches_leftovers():
    tutorial = "End a Llama-2 turn like this:\n```\nanswer </s><s>[INST] next\n```\nDone."
    assert not has_chat_tokens(tutorial) and strip_chat_tokens(tutorial) is tutorial
    leftover = "a strip that missed it ```\ncode </s><s>### Human: hi"
    assert has_chat_tokens(leftover)  # no_chat_tokens would quarantine it
