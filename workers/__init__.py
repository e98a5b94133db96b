"""The pipeline stages (generate, score, aggregate, sink); importable without Celery."""
