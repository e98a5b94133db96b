"""The RFT loop end to end on the demo model: sample, keep the ORM-correct candidates, fine-tune, sample again.

    python examples/rft/run.py                 # a few CPU minutes per step; see --help for the sizes

1. a generated copy task ("Repeat this word exactly, and write nothing else: apple"), its words split into
   training and held-apart prompts;
2. pass@1 before: sample the held-apart prompts at temperature 1.0 with the ``copy`` ORM (`producer submit`,
   its stats file gives the unbiased pass@1);
3. sample the training prompts, keep the candidates that pass ``--keep_orm`` (the output rows);
4. fine-tune with TRL's SFTTrainer on those rows (prompt -> kept answer, loss on the answer only) for
   ``--train_seconds`` at most;
5. pass@1 after: sample the held-apart prompts again with the fine-tuned model.

Prints one JSON summary (also written to ``WORKDIR/rft_summary.json``). The loop must run; a gain is not
promised, and what it measured is what it reports.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WORDS = ("apple river candle mountain pencil garden silver window rabbit orange tiger cloud planet butter forest "
         "yellow bridge winter summer castle dragon market rocket island carpet pocket basket button doctor "
         "engine finger hammer jacket kitten ladder lemon magnet needle ocean parrot pepper pillow puzzle "
         "ribbon saddle shadow spider spoon statue sugar tomato tunnel turtle violin wallet walnut wizard "
         "anchor bottle camera desert feather garlic helmet jungle kettle lizard marble meadow monkey napkin "
         "orchid paddle pirate quartz radish salmon sponge stripe thread trumpet velvet wagon whistle zipper").split()
PROMPT = "Repeat this word exactly, and write nothing else: {word}"


def write_task(workdir: Path, train: int, held: int, seed: int) -> tuple[Path, Path]:
    """Training and held-apart prompts over disjoint words, in swift's query/response layout."""
    if train + held > len(WORDS):
        raise SystemExit(f"--train_prompts + --eval_prompts must be at most {len(WORDS)} (distinct words)")
    words = random.Random(seed).sample(WORDS, train + held)
    paths = []
    for name, chosen in (("train", words[:train]), ("eval", words[train:])):
        path = workdir / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"query": PROMPT.format(word=w), "response": w}) + "\n" for w in chosen))
        paths.append(path)
    return paths[0], paths[1]


def sample(data: Path, model: str, out: str, orm: str, n: int, args: argparse.Namespace) -> dict:
    """`producer submit` as a user runs it; the run's manifest."""
    cmd = [sys.executable, "-m", "producer", "submit", str(data), "--model", model, "--num_return_sequences", str(n),
           "--n_best_to_keep", str(n), "--max_new_tokens", str(args.max_new_tokens), "--temperature", "1.0",
           "--orm_model", orm, "--external_plugins", str(HERE / "copy_orm.py"), "--seed", str(args.seed),
           "--output_dir", str(args.workdir), "--output_file", out, "--override_exist_file", "true", "--no_progress"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(cmd, cwd=args.workdir, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"sampling {data.name} failed:\n{proc.stderr[-3000:]}")
    return json.loads((args.workdir / out.replace(".jsonl", ".manifest.json")).read_text())


def fine_tune(rows_file: Path, model: str, target: Path, args: argparse.Namespace) -> dict:
    """SFT on the kept rows (prompt turns -> the kept answer); stops after --train_seconds."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    rows = [json.loads(line) for line in rows_file.read_text().splitlines() if line.strip()]
    data = Dataset.from_list([{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in rows])
    deadline = time.monotonic() + args.train_seconds

    class Deadline(TrainerCallback):
        def on_step_end(self, _args, state, control, **kwargs):
            control.should_training_stop = control.should_training_stop or time.monotonic() > deadline

    tokenizer = AutoTokenizer.from_pretrained(model)
    config = SFTConfig(output_dir=str(args.workdir / "sft"), max_steps=args.max_steps, learning_rate=args.learning_rate,
                       per_device_train_batch_size=args.batch_size, use_cpu=True, save_strategy="no",
                       report_to=[], logging_steps=5, seed=args.seed, lr_scheduler_type="constant",
                       disable_tqdm=True, gradient_checkpointing=False)  # a 135M model: memory is no concern
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(model, dtype="float32"), args=config,
                         train_dataset=data, processing_class=tokenizer, callbacks=[Deadline()])
    started = time.monotonic()
    result = trainer.train()
    trainer.save_model(str(target))
    tokenizer.save_pretrained(str(target))
    return {"rows": len(rows), "steps": result.global_step, "loss": round(result.training_loss, 4),
            "seconds": round(time.monotonic() - started, 1)}


def pass_at_1(manifest: dict) -> float | None:
    return manifest.get("stats", {}).get("mean", {}).get("pass@1")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("rft_output"))
    parser.add_argument("--train_prompts", type=int, default=48)
    parser.add_argument("--eval_prompts", type=int, default=24)
    parser.add_argument("--num_return_sequences", type=int, default=16, help="samples per training prompt")
    parser.add_argument("--eval_samples", type=int, default=8, help="samples per held-apart prompt (pass@1 from them)")
    parser.add_argument("--max_new_tokens", type=int, default=12)
    parser.add_argument("--keep_orm", default="copy", help="ORM that keeps the training rows: copy, or the looser "
                        "copy_contains")
    parser.add_argument("--train_seconds", type=float, default=180.0)
    parser.add_argument("--max_steps", type=int, default=200)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for key, value in (("TRANSFORMERS_VERBOSITY", "error"), ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"),
                       ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    from workers.models import DEMO_ALIAS, resolve_model

    base = resolve_model(DEMO_ALIAS)
    train, held = write_task(args.workdir, args.train_prompts, args.eval_prompts, args.seed)
    summary: dict = {"task": "copy", "train_prompts": args.train_prompts, "eval_prompts": args.eval_prompts}
    before = sample(held, base, "eval_before.jsonl", "copy", args.eval_samples, args)
    summary["pass@1_before"] = pass_at_1(before)
    kept = sample(train, base, "train_samples.jsonl", args.keep_orm, args.num_return_sequences, args)
    summary["train_samples"] = kept["counts"]["candidates"]
    summary["kept_rows"] = kept["counts"]["rows"]
    if kept["counts"]["rows"] == 0:
        summary["note"] = f"no candidate passed --keep_orm {args.keep_orm}: nothing to train on"
    else:
        tuned = args.workdir / "model"
        summary["training"] = fine_tune(args.workdir / "train_samples.jsonl", base, tuned, args)
        after = sample(held, str(tuned), "eval_after.jsonl", "copy", args.eval_samples, args)
        summary["pass@1_after"] = pass_at_1(after)
    (args.workdir / "rft_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
