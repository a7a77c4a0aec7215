"""The kubetune operator: kopf handlers that run FineTuneJobs as Kubernetes Jobs and report their status.

Never imports torch, transformers or the trainer (an import-linter contract in pyproject.toml).
"""
