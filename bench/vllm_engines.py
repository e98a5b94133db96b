"""vLLM through samplefleet against vLLM used bare, in one comparison run (run with .venv-vllm's python).

Usage: .venv-vllm/bin/python bench/vllm_engines.py [--repeats 1] [--out bench/results/vllm-engines]

Same job for every variant: bench20.jsonl, N=4, max_new_tokens=128, temperature 1.0, top_k 50, seed 42,
on the SmolLM2-135M test model in fp32 on the CPU build of vLLM (enforce_eager, threads bound to both cores):
  bare-vllm    : LLM(...).chat(all 20 prompts, SamplingParams(n=4)) in this script (the engine limit)
  ours-vllm    : `producer submit --sampler_engine vllm` (embedded, one shard of 20 prompts)
  ours-client  : `producer submit --sampler_engine client` against `vllm serve` on 127.0.0.1 (started first)
Generation seconds are each tool's own timer with the model loaded (bare: chat(); ours: manifest
shard_seconds); wall seconds include start-up. Writes <out>.json and <out>.md.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = Path(sys.executable)
ENV = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": "0-1", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "HF_HUB_OFFLINE": "1",
       "PYTHONPATH": str(ROOT)}
ENGINE = {"dtype": "float32", "enforce_eager": True, "max_model_len": 1024, "gpu_memory_utilization": 0.3}


def model_dir() -> str:
    sys.path.insert(0, str(ROOT))
    from workers.models import DEMO_ALIAS, resolve_model

    return resolve_model(DEMO_ALIAS)


def bare(model: str) -> dict:
    """The engine limit, in a child process so its start-up is timed like the others'."""
    code = f"""
import json, time
def main():
    t0 = time.time()
    from vllm import LLM, SamplingParams
    llm = LLM(model={model!r}, seed=42, **{ENGINE!r})
    rows = [json.loads(l) for l in open({str(BENCH / 'bench20.jsonl')!r})]
    t1 = time.time()
    outs = llm.chat([[{{"role": "user", "content": r["query"]}}] for r in rows],
                    SamplingParams(n=4, temperature=1.0, top_k=50, max_tokens=128), use_tqdm=False)
    t2 = time.time()
    print("RESULT " + json.dumps({{"generate_s": t2 - t1, "startup_s": t1 - t0,
                                  "samples": sum(len(o.outputs) for o in outs),
                                  "tokens": sum(len(c.token_ids) for o in outs for c in o.outputs)}}), flush=True)
if __name__ == "__main__":
    main()
"""
    started = time.perf_counter()
    out = subprocess.run([str(PY), "-c", code], env=ENV, capture_output=True, text=True, check=True)
    result = json.loads(next(line[7:] for line in out.stdout.splitlines() if line.startswith("RESULT ")))
    return {**result, "wall_s": time.perf_counter() - started}


def ours(engine: str, out_dir: Path, extra: list[str]) -> dict:
    cmd = [str(PY), "-m", "producer", "submit", str(BENCH / "bench20.jsonl"), "--model", "smollm2-135m-instruct",
           "--sampler_engine", engine, "--num_return_sequences", "4", "--max_new_tokens", "128", "--shard_size", "20",
           "--output_dir", str(out_dir), "--output_file", "x.jsonl", "--override_exist_file", "true",
           "--no_progress", *extra]
    started = time.perf_counter()
    subprocess.run(cmd, env=ENV, cwd=ROOT, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - started
    manifest = json.loads((out_dir / "x.manifest.json").read_text())
    c = manifest["counts"]
    return {"generate_s": manifest["timings"]["shard_seconds"], "wall_s": wall, "samples": c["candidates"],
            "tokens": c["tokens"], "command": " ".join(cmd)}


def serve(model: str) -> tuple[subprocess.Popen, str, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.perf_counter()
    proc = subprocess.Popen([str(PY), "-m", "vllm.entrypoints.openai.api_server", "--model", model,
                             "--host", "127.0.0.1", "--port", str(port),
                             "--served-model-name", "smollm2-135m-instruct", "--seed", "42", "--dtype", "float32",
                             "--enforce-eager", "--max-model-len", "1024", "--gpu-memory-utilization", "0.3"],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
            return proc, f"http://127.0.0.1:{port}/v1", time.perf_counter() - started
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("vllm serve exited")
            time.sleep(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", type=Path, default=BENCH / "results" / "vllm-engines")
    a = ap.parse_args()
    model = model_dir()
    runs = []
    for r in range(a.repeats):
        runs.append({"variant": "bare-vllm", "round": r + 1, **bare(model)})
        runs.append({"variant": "ours-vllm", "round": r + 1,
                     **ours("vllm", BENCH / "out" / "vllm-engines" / "vllm",
                            ["--engine_kwargs", json.dumps({k: v for k, v in ENGINE.items() if k != "dtype"}),
                             "--torch_dtype", "float32"])})
        proc, url, startup = serve(model)
        try:
            runs.append({"variant": "ours-client", "round": r + 1, "server_startup_s": startup,
                         **ours("client", BENCH / "out" / "vllm-engines" / "client",
                                 ["--base_url", url, "--engine_kwargs", '{"send_seed": false, "concurrency": 20}'])})
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(60)
    for run in runs:
        run["samples_per_s"] = run["samples"] / run["generate_s"]
        run["tok_per_s"] = run["tokens"] / run["generate_s"]
        print(json.dumps(run))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps({"utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                                      "engine_kwargs": ENGINE, "runs": runs}, indent=1))
    lines = ["| variant | round | generate s | wall s | samples | tokens | samples/s | tok/s (generate) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['variant']} | {r['round']} | {r['generate_s']:.1f} | {r['wall_s']:.1f} | {r['samples']} | "
              f"{r['tokens']} | {r['samples_per_s']:.2f} | {r['tok_per_s']:.1f} |" for r in runs]
    a.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
