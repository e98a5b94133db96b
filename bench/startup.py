"""Where the seconds before the first token go in a local run, and what the whole start costs end to end.

Usage: .venv/bin/python bench/startup.py [--rows 0] [--rounds 3] [--model smollm2-135m-instruct]
                                         [--torch_dtype auto] [--data bench/bench20.jsonl] [--out FILE]

Each round runs two fresh processes, one after the other (cold imports each time; the model's files are in the
page cache after the first round, as on any machine that ran the model before):
- **phases**: one interpreter that does, in order and timed one by one, ``import torch``, ``import transformers``
  (with the auto classes), the import of our modules (producer.submit, workers.embedded, workers.engines.hf), the
  counting pass over the data (``PromptStream.count``: reads and checks every row), the tokenizer load, the
  weights load (in the dtype ``--torch_dtype`` resolves to here) and the first forward pass (one prompt's
  prefill: kernel set-up is part of the start). ``interpreter_s`` is the process's wall time minus their sum.
- **e2e**: ``producer submit`` of the same data, N=1, max_new_tokens 1: the start a user waits through, with the
  counting pass overlapped with the model load as the local run does it. Wall time, and the manifest's
  ``load_seconds`` (the run's start until its engine was ready).
``--rows N`` writes a dataset of N rows (bench20's rows repeated, each made distinct) so that the counting pass
has real work; the e2e run then samples only ``--data_range 0 N//20`` of it (about 20 prompts), while it still
counts and checks every row, as a part of a sharded run does. Prints one JSON line per round and a summary line
(medians); ``--out`` writes them all as JSON. Run it on an idle machine: every phase here is CPU-bound.
"""
import time

T0 = time.perf_counter()
import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
PHASES = ("import_torch_s", "import_transformers_s", "import_ours_s", "count_s", "tokenizer_s", "weights_s",
          "first_forward_s")


def child(data: str, model: str, dtype: str) -> None:
    """The phases, in one fresh interpreter; prints one JSON line."""
    sys.path.insert(0, str(ROOT))
    marks = [time.perf_counter()]
    import torch

    marks.append(time.perf_counter())
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer

    marks.append(time.perf_counter())
    import producer.submit  # noqa: F401
    import workers.embedded  # noqa: F401
    from producer.datasets import PromptStream
    from schemas import DatasetSpec, JobSpec
    from workers.dtypes import resolve_dtype, torch_dtype
    from workers.engines.hf import TransformersEngine  # noqa: F401
    from workers.models import resolve_model

    marks.append(time.perf_counter())
    spec = JobSpec(model=model, datasets=[DatasetSpec(source=data)], output_file="x.jsonl")
    stream = PromptStream(spec)
    rows = stream.count()
    marks.append(time.perf_counter())
    path = resolve_model(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    marks.append(time.perf_counter())
    choice = resolve_dtype(dtype, path, "cpu", what="--model")
    weights = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(choice.dtype)).eval()
    marks.append(time.perf_counter())
    first = next(iter(stream.iterate(rows)))
    ids = tokenizer.apply_chat_template([m.model_dump() for m in first.messages], add_generation_prompt=True,
                                        tokenize=True, return_dict=True, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        weights(input_ids=ids)
    marks.append(time.perf_counter())
    phases = {name: round(b - a, 3) for name, a, b in zip(PHASES, marks, marks[1:])}
    print(json.dumps({**phases, "in_process_s": round(marks[-1] - T0, 3), "rows": rows, "dtype": choice.dtype,
                      "threads": torch.get_num_threads()}))


def _phases(data: str, a: argparse.Namespace) -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", "--data", data, "--model", a.model,
                           "--torch_dtype", a.torch_dtype], env=ENV, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"phases child failed:\n{done.stderr[-3000:]}")
    line = json.loads(done.stdout.strip().splitlines()[-1])
    return {**line, "wall_s": round(wall, 3), "interpreter_s": round(wall - line["in_process_s"], 3)}


def _e2e(data: str, rows: int, out: Path, a: argparse.Namespace) -> dict:
    part = ["--data_range", "0", str(rows // 20)] if rows > 40 else []
    cmd = [sys.executable, "-m", "producer", "submit", data, "--model", a.model, "--torch_dtype", a.torch_dtype,
           "--num_return_sequences", "1", "--max_new_tokens", "1", "--output_dir", str(out), "--output_file",
           "s.jsonl", "--override_exist_file", "true", "--no_progress", *part]
    started = time.perf_counter()
    done = subprocess.run(cmd, env=ENV, cwd=out, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"e2e run failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")
    manifest = json.loads((out / "s.manifest.json").read_text())
    return {"e2e_wall_s": round(wall, 3), "e2e_load_s": round(manifest["timings"]["load_seconds"], 3),
            "e2e_prompts": manifest["counts"]["prompts"], "e2e_command": " ".join(cmd[1:])}


def _dataset(rows: int, folder: Path, source: Path) -> Path:
    base = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    path = folder / f"rows{rows}.jsonl"
    with path.open("w", encoding="utf-8") as fh:
        for k in range(rows):
            row = base[k % len(base)]
            fh.write(json.dumps({**row, "query": f"{row['query']} (case {k})"}) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(HERE / "bench20.jsonl"))
    ap.add_argument("--rows", type=int, default=0, help="write and use a dataset of this many rows instead")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--torch_dtype", default="auto")
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.data, a.model, a.torch_dtype)
        return
    with tempfile.TemporaryDirectory(prefix="samplefleet-startup-") as tmp:
        folder = Path(tmp)
        data = str(_dataset(a.rows, folder, Path(a.data))) if a.rows else a.data
        rows = a.rows or sum(1 for line in Path(data).read_text(encoding="utf-8").splitlines() if line.strip())
        rounds = []
        for r in range(a.rounds):
            line = {"round": r + 1, **_phases(data, a), **_e2e(data, rows, folder, a)}
            print(json.dumps(line), flush=True)
            rounds.append(line)
    keys = (*PHASES, "interpreter_s", "wall_s", "e2e_wall_s", "e2e_load_s")
    summary = {"summary": "medians", "rounds": len(rounds), "rows": rows, "dtype": rounds[0]["dtype"],
               "threads": rounds[0]["threads"], **{k: round(statistics.median(x[k] for x in rounds), 3) for k in keys}}
    print(json.dumps(summary))
    if a.out:
        Path(a.out).write_text(json.dumps({"rounds": rounds, "summary": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
