"""The prompt templates render exactly what they rendered before they shared one turn loop.

The expected segments are literal strings recorded from the per-template functions as they were
(at commit f516e6a, before the refactor), so any change in the bytes a template produces fails here.
"""

from __future__ import annotations

import pytest

from moelight.data.prompt_templates import TEMPLATES

CONVERSATIONS = {
    "one_turn": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."}],
    "multi_turn": [
        {"role": "user", "content": "  Hi \n"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": " 7 "},
    ],
    "own_system": [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "Why?"},
        {"role": "assistant", "content": "Because."},
    ],
    "assistant_first": [
        {"role": "assistant", "content": "Welcome."},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": "Sure"},
    ],
    "prompt_only": [{"role": "user", "content": "Open question"}],
}

EXPECTED = {  # (template, conversation) -> (segments, eos_after_response, bos_first)
    ("c2r-instruct", "one_turn"): (
        [
            (
                "You are an AI assistant, developed by DeepSeek Company. For politically sensitive questions, security and privacy issues, you will refuse to answer.\n### Instruction:\nWhat is 2+2?\n### Response:\n",
                False,
            ),
            ("4.\n<|EOT|>", True),
        ],
        False,
        False,
    ),
    ("c2r-instruct", "multi_turn"): (
        [
            (
                "You are an AI assistant, developed by DeepSeek Company. For politically sensitive questions, security and privacy issues, you will refuse to answer.\n### Instruction:\nHi\n### Response:\n",
                False,
            ),
            ("Hello!\n<|EOT|>", True),
            ("\n### Instruction:\nName a prime.\n### Response:\n", False),
            (" 7 \n<|EOT|>", True),
        ],
        False,
        False,
    ),
    ("c2r-instruct", "own_system"): (
        [("Be terse.\n### Instruction:\nWhy?\n### Response:\n", False), ("Because.\n<|EOT|>", True)],
        False,
        False,
    ),
    ("c2r-instruct", "assistant_first"): (
        [
            ("Welcome.\n<|EOT|>", True),
            (
                "You are an AI assistant, developed by DeepSeek Company. For politically sensitive questions, security and privacy issues, you will refuse to answer.\n### Instruction:\nThanks\n### Response:\n",
                False,
            ),
            ("Sure\n<|EOT|>", True),
        ],
        False,
        False,
    ),
    ("c2r-instruct", "prompt_only"): (
        [
            (
                "You are an AI assistant, developed by DeepSeek Company. For politically sensitive questions, security and privacy issues, you will refuse to answer.\n### Instruction:\nOpen question\n### Response:\n",
                False,
            )
        ],
        False,
        False,
    ),
    ("vicuna", "one_turn"): ([(" USER: What is 2+2? ASSISTANT:", False), (" 4.", True)], True, True),
    ("vicuna", "multi_turn"): (
        [
            (" USER:   Hi \n ASSISTANT:", False),
            (" Hello!", True),
            ("USER: Name a prime. ASSISTANT:", False),
            ("  7 ", True),
        ],
        True,
        True,
    ),
    ("vicuna", "own_system"): ([("Be terse. USER: Why? ASSISTANT:", False), (" Because.", True)], True, True),
    ("vicuna", "assistant_first"): (
        [(" Welcome.", True), (" USER: Thanks ASSISTANT:", False), (" Sure", True)],
        True,
        True,
    ),
    ("vicuna", "prompt_only"): ([(" USER: Open question ASSISTANT:", False)], True, True),
}


@pytest.mark.parametrize("template, conversation", sorted(EXPECTED))
def test_rendering_is_byte_identical_to_before(template, conversation):
    segments, eos_after_response, bos_first = EXPECTED[template, conversation]
    rendered = TEMPLATES[template](CONVERSATIONS[conversation])
    assert rendered.segments == segments
    assert (rendered.eos_after_response, rendered.bos_first) == (eos_after_response, bos_first)
