"""bioagents: a job system for AI research agents (chat answers and deep-research runs)."""

__version__ = "0.1.0"
