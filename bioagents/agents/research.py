"""The deep-research agent: one LLM request per stage, each stage's output kept in the state row
so that a retried or restarted attempt resumes after the last stored stage (SPEC §6)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ..jobs.spec import QueueSpec
from ..usage import TokenUsage
from .chat import Progress
from .llm import LLM
from .reply import Reply, stream_reply

SaveStage = Callable[[str, str], Awaitable[None]]

INSTRUCTIONS = {
    "planning": "Plan a literature-based investigation of the question.",
    "literature": "List the key papers for the plan, one per line starting with '- '.",
    "analysis": "Analyse the findings of the listed papers.",
    "hypothesis": "Propose testable hypotheses from the analysis.",
    "reflection": "Critique the hypotheses and note gaps.",
    "reply": "Write the final research report for the user.",
}


async def run(
    question: str,
    spec: QueueSpec,
    llm: LLM,
    stored: dict,
    progress: Progress,
    save_stage: SaveStage,
    reply: Reply,
    usage: TokenUsage,
) -> tuple[str, list[str]]:
    """Run the stages not yet in `stored` (stage → output); returns (report, papers). The
    `reply` stage, the report itself, is streamed into `reply`."""
    outputs = dict(stored)
    for stage in spec.stages:
        await progress(stage.name, stage.percent)
        if stage.name in outputs:
            continue
        context = "\n\n".join(f"## {name}\n{text}" for name, text in outputs.items())
        prompt = f"Question: {question}\n\n{context}".strip()
        instructions = INSTRUCTIONS[stage.name]
        if stage.name == "reply":
            outputs[stage.name] = await stream_reply(llm, instructions, prompt, usage, reply)
        else:
            outputs[stage.name] = await llm.complete(instructions, prompt, usage)
        await save_stage(stage.name, outputs[stage.name])
    papers = [
        line[2:].strip()
        for line in outputs.get("literature", "").splitlines()
        if line.startswith("- ")
    ]
    return outputs["reply"], papers
