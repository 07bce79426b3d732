"""The aligned models' prompts as Re-Align wrote them, for `tdsdist generate --aligned-template input`.

    python -m tools.reproduce.prompts --format vicuna IN.json OUT.json

Reads a just-eval file (`id`, `pure_input`; the shipped Llama-2-7b-chat file will do) and writes
a JSON list of `{id, pure_input, input}` whose `input` is the prompt the published pipeline gave
the aligned model, character for character: the formats of `preprocess` in Re-Align/URIAL
`src/adapt_utils.py` (commit 01928f8f5d092f31641ce7b008bf9c5b68e48407; default system messages,
no in-context alignment). `llama2-chat` gives back the shipped file's `input` fields exactly (the
tests check it on all 1,000). Their tokenizers' own chat templates differ from these in spaces
and system text, so `--aligned-template chat` would not reproduce the published contexts.

The Llama-2 and Mistral formats start with the literal text `<s>`, which their tokenizers read as
BOS; Re-Align's code then added a second BOS (`add_special_tokens=True`), while tdsdist never
doubles it (docs/reproducing.md says what that changes).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tools.common import arg_parser

LLAMA2_SYSTEM = (
    "<<SYS>>\nYou are a helpful, respectful and honest assistant. Always answer as helpfully as"
    " possible, while being safe.  Your answers should not include any harmful, unethical, racist,"
    " sexist, toxic, dangerous, or illegal content. Please ensure that your responses are socially"
    " unbiased and positive in nature.\n\nIf a question does not make any sense, or is not"
    " factually coherent, explain why instead of answering something not correct. If you don't"
    " know the answer to a question, please don't share false information.\n<</SYS>>\n"
)
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives"
    " helpful, detailed, and polite answers to the user's questions."
)
MISTRAL_SYSTEM = (
    "Always assist with care, respect, and truth. Respond with utmost utility yet securely. Avoid"
    " harmful, unethical, prejudiced, or negative content. Ensure replies promote fairness and"
    " positivity."
)
#: `{q}` is the bare instruction (`pure_input`); spaces and line breaks as in adapt_utils.py.
FORMATS = {
    "llama2-chat": "<s>[INST] " + LLAMA2_SYSTEM + " \n {q} [/INST] ",
    "vicuna": VICUNA_SYSTEM + "\n USER: {q} \nASSISTANT:",
    "mistral-instruct": "<s>[INST] " + MISTRAL_SYSTEM + " {q} [/INST]",
}


def prompt(fmt: str, instruction: str) -> str:
    """`str.replace`, not `str.format`: instructions may hold braces."""
    return FORMATS[fmt].replace("{q}", instruction)


def main(argv: list[str] | None = None) -> None:
    parser = arg_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--format", required=True, choices=sorted(FORMATS))
    parser.add_argument("data", type=Path, help="just-eval JSON list (id, pure_input)")
    parser.add_argument("out", type=Path, help="prompts file to write (JSON list)")
    args = parser.parse_args(argv)
    records = json.loads(args.data.read_text(encoding="utf-8"))
    rows = [
        {
            "id": r["id"],
            "pure_input": r["pure_input"],
            "input": prompt(args.format, r["pure_input"]),
        }
        for r in records
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    print(f"{args.out}: {len(rows)} {args.format} prompts", file=sys.stderr)


if __name__ == "__main__":
    main()
