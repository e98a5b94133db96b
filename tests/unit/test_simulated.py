"""The simulated engine (a benchmark and fault-injection tool): same seed, same candidates; faults on demand."""
from __future__ import annotations

import pytest

from schemas import JobSpec, Prompt
from schemas.errors import ConfigError
from workers.engines.simulated import SimulatedEngine
from workers.generate import load_engine


def _spec(**engine_kwargs) -> JobSpec:
    return JobSpec.model_validate({"model": "sim", "sampler_engine": "simulated", "datasets": [{"source": "d.jsonl"}], "output_file": "x.jsonl",
                                   "engine_kwargs": {"shard_seconds": 0, **engine_kwargs},
                                   "sampling": {"num_return_sequences": 3, "max_new_tokens": 20}})


PROMPTS = [Prompt(id=f"id{i}", row=i, source=f"d.jsonl line {i + 1}", messages=[{"role": "user", "content": f"q{i}"}])
           for i in range(4)]


def test_same_seed_same_candidates_and_lengths_within_the_cap() -> None:
    spec = _spec()
    engine = load_engine(spec)
    first, again = (engine.generate(PROMPTS, spec.sampling, seed=7) for _ in range(2))
    assert first == again and len(first) == 4 and all(len(g.candidates) == 3 for g in first)
    assert all(1 <= c.tokens <= 20 for g in first for c in g.candidates)
    assert engine.generate(PROMPTS, spec.sampling, seed=8) != first


def test_fail_on_raises_for_that_prompt_and_bad_kwargs_are_named() -> None:
    spec = _spec(fail_on="q2")
    with pytest.raises(RuntimeError, match="prompt row 2"):
        load_engine(spec).generate(PROMPTS, spec.sampling, seed=1)
    with pytest.raises(ConfigError, match="simulated engine.*latency"):
        SimulatedEngine.from_spec(_spec(latency=3))
