"""What one agent run costs with no platform at all: the floor under the load suite's worker CPU.

    .venv/bin/python tests/load/agent_floor.py

pydantic-ai's agent on the OpenAI SDK, streaming, asks the load suite's model double (in this
process, on a thread of its own) for the same reply the load suite's runs get, as an application
calling the model directly would; then a bare aiohttp client streams the same answer, which is the
double's own share. Prints the CPU of each per run (this process's CPU time over 200 runs)."""

import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "agentapi.settings.test")

import aiohttp
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from tests.sessions.model_doubles import ModelDouble

RUNS = 200


async def cpu_per_run(one) -> float:
    for _ in range(20):  # warm
        await one()
    started = time.process_time()
    for _ in range(RUNS):
        await one()
    return (time.process_time() - started) / RUNS * 1000


async def main(double: ModelDouble) -> None:
    agent = Agent(OpenAIChatModel("double-1", provider=OpenAIProvider(base_url=f"{double.url}/v1", api_key="sk-x")))

    async def agent_run():
        async with agent.iter("Hello, double.") as run:
            async for node in run:
                if Agent.is_model_request_node(node):
                    async with node.stream(run.ctx) as stream:
                        async for _event in stream:
                            pass

    body = {"model": "double-1", "stream": True, "messages": [{"role": "user", "content": "Hello, double."}]}
    async with aiohttp.ClientSession() as session:

        async def bare():
            async with session.post(f"{double.url}/v1/chat/completions", json=body) as response:
                async for _line in response.content:
                    pass

        with_agent, without = await cpu_per_run(agent_run), await cpu_per_run(bare)
    print(f"pydantic-ai agent run, streamed: {with_agent:.2f} ms of CPU per run (the double's share included)")
    print(f"bare streaming client:           {without:.2f} ms of CPU per run (the double's share)")
    print(f"the agent loop's own:            {with_agent - without:.2f} ms of CPU per run")


if __name__ == "__main__":
    asyncio.run(main(ModelDouble()))
