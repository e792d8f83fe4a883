"""The agents: chat and deep research, over an LLM provider."""
