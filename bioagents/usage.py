"""Token usage of the language model (SPEC §10): what an attempt spent, summed per message."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class TokenUsage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens

    def to_json(self) -> dict:
        return {"promptTokens": self.prompt_tokens, "completionTokens": self.completion_tokens}
