"""Stage contracts: plain, versioned, JSON-only records. Imports nothing else of samplefleet."""
from schemas.job import SCHEMA_VERSION, DatasetSpec, JobSpec
from schemas.records import (
    Candidate,
    Generation,
    GeneratedShard,
    Message,
    OutputRow,
    Prompt,
    PromptShard,
    PromptStats,
    Scores,
    ShardSummary,
)
from schemas.sampling import SamplingParams

__all__ = [
    "SCHEMA_VERSION", "Candidate", "DatasetSpec", "Generation", "GeneratedShard", "JobSpec", "Message",
    "OutputRow", "Prompt", "PromptShard", "PromptStats", "SamplingParams", "Scores", "ShardSummary",
]
