"""The ORMs of the RFT example's copy task, in swift's plugin convention (``--external_plugins copy_orm.py``).

``copy``: 1.0 when the reply is exactly the word asked for (case, surrounding spaces, quotes and a final
full stop aside), else 0.0. ``copy_contains``: 1.0 when the reply contains the word: a looser filter for
the training rows of the tiny test loop, where exact copies are rare.
"""
from workers.scoring import ORM, orms


def _clean(text: str) -> str:
    return text.strip().strip("\"'`*").rstrip(".!").strip().casefold()


class Copy(ORM):
    def __call__(self, infer_requests, ground_truths, **kwargs):
        return [float(_clean(r.response) == _clean(t or "")) for r, t in zip(infer_requests, ground_truths)]


class CopyContains(ORM):
    def __call__(self, infer_requests, ground_truths, **kwargs):
        return [float(bool(t) and _clean(t) in r.response.casefold()) for r, t in zip(infer_requests, ground_truths)]


orms["copy"] = Copy
orms["copy_contains"] = CopyContains
