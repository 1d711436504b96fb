#!/usr/bin/env python3
"""Render chat-template goldens with transformers, for the runner's chat template tests.

Output: runner/tests/fixtures/chat/goldens.json (relative to the repository root, or OUT if given).

    ~/.cache/strata-venv-ref/bin/python scripts/make-chat-goldens.py [OUT]

Needs the reference venv (see scripts/make-tiny-fixtures.py; only transformers and its jinja2 are used) and
the SmolLM2-135M-Instruct folder from scripts/fetch-smollm2.sh (env STRATA_SMOLLM2, default
~/.cache/strata-models/smollm2-135m-instruct): its tokenizer.json is the tokenizer every fixture is loaded
with, since only the chat template and the special-token strings matter for rendering.

Templates: every folder runner/tests/fixtures/chat/<name>/ holds a tokenizer_config.json with a published
chat_template (provenance in runner/tests/fixtures/chat/README.md). `smollm2` is a verbatim copy of the
model folder's tokenizer_config.json; the script checks that it still matches and renders it from the model
folder itself. For the others it builds a temporary folder with SmolLM2's tokenizer.json and the fixture's
tokenizer_config.json (tokenizer_class set to PreTrainedTokenizerFast so that no model-specific tokenizer
class runs), loads it with AutoTokenizer.from_pretrained and calls

    tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=..., **extra)

Each case records the messages, add_generation_prompt, the extra template variables (`tools`, `date_string`,
`enable_thinking`, ...) and either the rendered string (`expected`) or, when the template calls
raise_exception, its message (`error`). Extra variables that are JSON objects must have sorted keys: the Rust
side reads them through serde_json, whose maps are sorted, so `tojson` output only compares equal when the
Python dicts are in the same order (the script checks this).

The output is deterministic (no timestamps; dates are pinned through `date_string`).
"""

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import jinja2  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "runner" / "tests" / "fixtures" / "chat"
MODEL_DIR = Path(
    os.environ.get("STRATA_SMOLLM2", Path.home() / ".cache" / "strata-models" / "smollm2-135m-instruct")
)

SPECIAL = (
    "Tom & Jerry's <b>\"quoted\"</b> \\ back\\slash {{ not jinja }} — café, 東京, 🎉👍🏽\n"
    "second line\n\ttabbed</s><|im_end|>"
)

CONVERSATIONS = {
    "single_user": [{"role": "user", "content": "What is the capital of France?"}],
    "system_user": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Name a prime number."},
    ],
    "multi_turn": [
        {"role": "system", "content": "You answer in French."},
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Bonjour ! Comment puis-je vous aider ?"},
        {"role": "user", "content": "What's 2+2?"},
    ],
    "multi_turn_no_system": [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello, how can I help?"},
        {"role": "user", "content": "Tell me a joke."},
        {"role": "assistant", "content": "Why did the chicken cross the road?"},
    ],
    "special_chars": [
        {"role": "system", "content": SPECIAL},
        {"role": "user", "content": SPECIAL},
        {"role": "assistant", "content": SPECIAL},
        {"role": "user", "content": "and again: " + SPECIAL},
    ],
    "whitespace": [
        {"role": "system", "content": "  padded system  \n"},
        {"role": "user", "content": "\n  padded user\t "},
        {"role": "assistant", "content": "   "},
        {"role": "user", "content": ""},
    ],
    "tool_result": [
        {"role": "user", "content": "What's the weather in Tokyo?"},
        {"role": "assistant", "content": "Let me check."},
        {"role": "tool", "content": SPECIAL},
    ],
    "thinking_history": [
        {"role": "user", "content": "Is 7 prime?"},
        {"role": "assistant", "content": "<think>\nIt has no divisors but 1 and 7.\n</think>\n\nYes, 7 is prime."},
        {"role": "user", "content": "And 9?"},
        {"role": "assistant", "content": "<think>\n9 = 3 * 3.\n</think>\n\nNo, 9 = 3 × 3."},
    ],
    "roles_not_alternating": [
        {"role": "user", "content": "one"},
        {"role": "user", "content": "two"},
    ],
}

# Sorted keys at every level (see the docstring).
TOOLS = [
    {
        "function": {
            "description": "Get the weather <b>now</b> & 'later' in °C — 東京",
            "name": "get_weather",
            "parameters": {
                "properties": {
                    "city": {"description": 'City name, e.g. "Paris"', "type": "string"},
                    "days": {"default": 1, "maximum": 14.0, "minimum": 0.5, "type": "number"},
                    "units": {"enum": ["celsius", "fahrenheit"], "tolerance": 1e-05, "type": "string"},
                },
                "required": ["city"],
                "type": "object",
            },
        },
        "type": "function",
    },
    {"function": {"description": "", "name": "noop", "parameters": {"properties": {}, "type": "object"}}, "type": "function"},
]

DATE = {"date_string": "26 Jul 2024"}

BASIC = ["single_user", "system_user", "multi_turn", "multi_turn_no_system", "special_chars", "whitespace"]

# template name -> list of (conversation, extra variables)
PLAN = {
    "smollm2": [(c, {}) for c in BASIC + ["tool_result"]],
    "llama-3.1-8b-instruct": [(c, {}) for c in BASIC + ["tool_result"]]
    + [
        ("single_user", {"date_string": "01 Jan 2025"}),
        ("system_user", {"tools": TOOLS}),
        ("system_user", {"tools": TOOLS, "tools_in_user_message": False}),
        ("special_chars", {"builtin_tools": ["brave_search", "code_interpreter", "wolfram_alpha"]}),
    ],
    "llama-3.2-1b-instruct": [(c, DATE) for c in BASIC + ["tool_result"]]
    + [("system_user", {**DATE, "tools": TOOLS})],
    "qwen2.5-0.5b-instruct": [(c, {}) for c in BASIC + ["tool_result"]]
    + [("system_user", {"tools": TOOLS}), ("single_user", {"tools": TOOLS})],
    "qwen3-8b": [(c, {}) for c in BASIC + ["tool_result", "thinking_history"]]
    + [
        ("single_user", {"enable_thinking": False}),
        ("system_user", {"tools": TOOLS}),
        ("thinking_history", {"enable_thinking": False}),
    ],
    "mistral-7b-instruct-v0.3": [(c, {}) for c in BASIC + ["roles_not_alternating", "tool_result"]]
    + [("single_user", {"tools": TOOLS})],
    # Gemma 2 refuses a system message and non-alternating roles (raise_exception).
    "gemma-2-9b-it": [(c, {}) for c in BASIC + ["roles_not_alternating"]],
    # Phi-3 mini renders system/user/assistant turns and drops other roles (the tool message).
    "phi-3-mini-4k-instruct": [(c, {}) for c in BASIC + ["tool_result"]],
    # Mixtral 8x7B Instruct: Mistral's v1 template with an optional system message; refuses other roles.
    "mixtral-8x7b-instruct-v0.1": [(c, {}) for c in BASIC + ["roles_not_alternating", "tool_result"]],
    # Qwen1.5 chat models (Qwen1.5-MoE-A2.7B-Chat): ChatML with a default system message.
    "qwen1.5-chat": [(c, {}) for c in BASIC + ["tool_result"]],
    # Qwen 3 as released (Qwen3-30B-A3B and the dense models at release); qwen3-8b is the later revision.
    "qwen3-initial": [(c, {}) for c in BASIC + ["tool_result", "thinking_history"]]
    + [
        ("single_user", {"enable_thinking": False}),
        ("system_user", {"tools": TOOLS}),
        ("thinking_history", {"enable_thinking": False}),
    ],
    # InternLM2 chat: ChatML after bos_token, eos_token after a final assistant turn.
    "internlm2-chat-7b": [(c, {}) for c in BASIC + ["tool_result"]],
    # GLM-4 chat: [gMASK]<sop>, <|role|> headers, empty messages skipped (its tools ride on messages,
    # which the runner's plain role/content messages do not carry).
    "glm-4-9b-chat": [(c, {}) for c in BASIC + ["tool_result"]],
}


def check_sorted(value, where):
    if isinstance(value, dict):
        keys = list(value)
        if keys != sorted(keys):
            sys.exit(f"make-chat-goldens.py: keys of {where} are not sorted: {keys}")
        for k, v in value.items():
            check_sorted(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_sorted(v, f"{where}[{i}]")


def load_tokenizer(name, tmp):
    config_path = FIXTURES / name / "tokenizer_config.json"
    if name == "smollm2":
        real = json.loads((MODEL_DIR / "tokenizer_config.json").read_text(encoding="utf-8"))
        fixture = json.loads(config_path.read_text(encoding="utf-8"))
        if real != fixture:
            sys.exit(f"make-chat-goldens.py: {config_path} differs from {MODEL_DIR}/tokenizer_config.json")
        return AutoTokenizer.from_pretrained(MODEL_DIR)
    folder = Path(tmp) / name
    folder.mkdir()
    shutil.copyfile(MODEL_DIR / "tokenizer.json", folder / "tokenizer.json")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return AutoTokenizer.from_pretrained(folder)


def main():
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else FIXTURES / "goldens.json"
    if not (MODEL_DIR / "tokenizer.json").is_file():
        sys.exit(f"make-chat-goldens.py: {MODEL_DIR}/tokenizer.json not found; run scripts/fetch-smollm2.sh")
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, plan in PLAN.items():
            tokenizer = load_tokenizer(name, tmp)
            for conversation, extra in plan:
                check_sorted(extra, f"{name}/{conversation} extra")
                for add_generation_prompt in (True, False):
                    messages = CONVERSATIONS[conversation]
                    case = {
                        "template": name,
                        "conversation": conversation,
                        "messages": messages,
                        "add_generation_prompt": add_generation_prompt,
                        "extra": extra,
                    }
                    try:
                        case["expected"] = tokenizer.apply_chat_template(
                            messages, tokenize=False, add_generation_prompt=add_generation_prompt, **extra
                        )
                    except jinja2.exceptions.TemplateError as err:
                        case["error"] = str(err)
                    cases.append(case)
    goldens = {
        "format": "strata-chat-goldens/1",
        "reference": {
            "library": "transformers",
            "transformers": transformers.__version__,
            "jinja2": jinja2.__version__,
            "python": sys.version.split()[0],
            "call": "AutoTokenizer.from_pretrained(dir).apply_chat_template(messages, tokenize=False, "
            "add_generation_prompt=add_generation_prompt, **extra)",
        },
        "cases": cases,
    }
    out.write_text(json.dumps(goldens, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    errors = sum("error" in c for c in cases)
    print(f"make-chat-goldens.py: wrote {len(cases)} cases ({errors} raise_exception) to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
