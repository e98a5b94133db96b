"""Count an output jsonl the same way for every tool: lines, and the last assistant message re-tokenized.

Usage (in a venv with transformers): python bench/count_tokens.py --model DIR FILE [FILE ...]
Prints one JSON object: {FILE: {"lines", "retokenized_tokens", "unique_ids", "lines_with_boxed",
"with_rejected_response"}} (a missing file gives lines 0). Tokens: the text of the last message of each
line (the candidate), tokenized with add_special_tokens=False, so no EOS: this is how the anchor's
run_swift.sh counts swift's output, and the same rule is applied to samplefleet's and raw_generate's.
"""
import argparse
import json
from pathlib import Path

from transformers import AutoTokenizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("files", nargs="+")
    a = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(a.model)
    report = {}
    for name in a.files:
        path = Path(name)
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] \
            if path.exists() else []
        texts = [r["messages"][-1]["content"] for r in rows]
        report[name] = {
            "lines": len(rows),
            "retokenized_tokens": sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts),
            "unique_ids": len({r.get("id") for r in rows if r.get("id") is not None}),
            "lines_with_boxed": sum("\\boxed" in t for t in texts),
            "with_rejected_response": sum("rejected_response" in r for r in rows),
        }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
