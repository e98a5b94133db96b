"""Engine limit: bare transformers ``model.generate`` on our demo model, nothing of samplefleet.

Usage (in our venv):
    .venv/bin/python bench/raw_generate.py [--model DIR] [--data FILE] [--chunk 20] [--n 4] [--max-new 128]
                                           [--seed 42] [--out FILE]

What it does: reads ``{"query": ...}`` rows (bench20.jsonl), renders each with the model's own chat template
(SmolLM2's adds its default system prompt, as samplefleet's engine does), and calls ``model.generate`` once
per ``--chunk`` prompts with left padding, ``do_sample=True, temperature=1.0, top_k=50, top_p=1.0``,
``num_return_sequences=N``, ``max_new_tokens=M``, after ``torch.manual_seed(seed)``. --chunk 20 on bench20
is a single call of 20 x N rows.

Prints ONE JSON line on stdout: import_s, load_s, generate_s, wall_s (from the first line of this script to
the end, so interpreter start-up is not in it), prompts, sequences, decode_steps, generated_tokens (per
sequence: tokens up to and including the first EOS, else all of them; the same rule as the anchor's
raw_generate.py and as samplefleet's manifest) and retokenized_tokens (the decoded text re-tokenized without
special tokens: how bench/count_tokens.py counts swift's and samplefleet's outputs), plus versions.
--out writes the candidates as chat jsonl (``messages`` with the assistant answer last), like the other tools.

Self-contained: adapted from /work/shared/anchor/raw_generate.py, needs only torch and transformers.
"""
import time

T0 = time.perf_counter()
import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

T_IMPORT = time.perf_counter() - T0
HERE = Path(__file__).resolve().parent


def default_model() -> str:
    """Where samplefleet's alias ``smollm2-135m-instruct`` lives (workers/models.py: $SAMPLEFLEET_CACHE or ~/.cache)."""
    cache = os.environ.get("SAMPLEFLEET_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "samplefleet")
    return os.path.join(cache, "models", "smollm2-135m-instruct")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=default_model())
    ap.add_argument("--data", default=str(HERE / "bench20.jsonl"))
    ap.add_argument("--chunk", type=int, default=20, help="prompts per generate() call")
    ap.add_argument("--n", type=int, default=4, help="num_return_sequences")
    ap.add_argument("--max-new", type=int, default=128, help="max_new_tokens")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", default=None, help="write candidates as chat jsonl here")
    a = ap.parse_args()
    if not Path(a.model, "config.json").exists():
        raise SystemExit(f"no model at {a.model} (run `make model` in /work/main; nothing is downloaded here)")

    rows = [json.loads(line) for line in Path(a.data).read_text().splitlines() if line.strip()]
    t1 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(a.model)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32).eval()
    t_load = time.perf_counter() - t1
    eos = model.generation_config.eos_token_id
    eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
    pad = tok.pad_token_id if tok.pad_token_id is not None else min(eos_ids)
    torch.manual_seed(a.seed)

    results, gen_tokens, steps = [], 0, 0
    t2 = time.perf_counter()
    for i in range(0, len(rows), a.chunk):
        chunk = rows[i:i + a.chunk]
        texts = [tok.apply_chat_template([{"role": "user", "content": r["query"]}], tokenize=False,
                                         add_generation_prompt=True) for r in chunk]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**enc, do_sample=True, temperature=1.0, top_k=50, top_p=1.0,
                                 num_return_sequences=a.n, max_new_tokens=a.max_new,
                                 eos_token_id=eos, pad_token_id=pad)
        new = out[:, enc["input_ids"].shape[1]:]
        steps += new.shape[1]
        for j, seq in enumerate(new.tolist()):
            n = next((k + 1 for k, t in enumerate(seq) if t in eos_ids), len(seq))  # up to and including EOS
            gen_tokens += n
            results.append((chunk[j // a.n]["query"], tok.decode(seq[:n], skip_special_tokens=True)))
    t_gen = time.perf_counter() - t2

    retok = sum(len(tok(text, add_special_tokens=False)["input_ids"]) for _, text in results)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text("".join(
            json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": t}]},
                       ensure_ascii=False) + "\n" for q, t in results), encoding="utf-8")
    print(json.dumps({
        "import_s": round(T_IMPORT, 3), "load_s": round(t_load, 3), "generate_s": round(t_gen, 3),
        "wall_s": round(time.perf_counter() - T0, 3),
        "prompts": len(rows), "sequences": len(results), "decode_steps": steps,
        "generated_tokens": gen_tokens, "retokenized_tokens": retok,
        "tok_per_s_generate": round(gen_tokens / t_gen, 2) if t_gen else None,
        "chunk": a.chunk, "n": a.n, "max_new": a.max_new, "seed": a.seed, "model": a.model,
        "torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
