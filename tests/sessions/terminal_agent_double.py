"""A double of a terminal agent behind coder/agentapi, as the platform starts one per session from
an operator's template (sessions_app.terminals): neither coder/agentapi's binary nor the terminal
agents it fronts are in the package registries. It serves agentapi's HTTP contract (the one
model_doubles.ModelDouble speaks) on the port it is given, and answers each message as a terminal
agent that uses the platform's tools would:

- `call NAME {json}`: calls the tool NAME at the session's MCP endpoint, with fastmcp's client, the
  URL and token the platform handed it (PLATFORM_MCP_URL, PLATFORM_MCP_TOKEN), and answers with the
  result's text (or `error: ...`);
- `whoami`: answers with what the tests check of how it was started (its pid, working directory,
  environment variable names, whether the workspace's .mcp.json names the endpoint);
- anything else: an echo.

Run by path (`python tests/sessions/terminal_agent_double.py --port N`): its own directory is then
its import path, and nothing of the platform's is imported."""

import argparse
import json
import os
import threading

from model_doubles import ModelDouble


class TerminalAgentDouble(ModelDouble):
    async def _answer(self):
        self.reply = await self.respond(self.transcript[-1]["content"])
        await super()._answer()

    async def respond(self, prompt: str) -> str:
        if prompt.strip() == "whoami":
            config = {}
            if os.path.exists(".mcp.json"):
                with open(".mcp.json") as file:
                    config = json.load(file)
            url = config.get("mcpServers", {}).get("platform", {}).get("url")
            named = url is not None and url == os.environ.get("PLATFORM_MCP_URL")
            return json.dumps({"pid": os.getpid(), "cwd": os.getcwd(), "env": sorted(os.environ),
                               "mcp_config_names_endpoint": named})  # fmt: skip
        if prompt.startswith("call "):
            _, name, arguments = prompt.split(" ", 2)
            try:
                return await self.call(name, json.loads(arguments))
            except Exception as exc:  # the agent reports what went wrong, as a terminal agent would
                return f"error: {type(exc).__name__}: {exc}"
        return f"echo: {prompt}"

    @staticmethod
    async def call(name: str, arguments: dict) -> str:
        from fastmcp import Client
        from fastmcp.client.transports import StreamableHttpTransport

        headers = {"Authorization": f"Bearer {os.environ['PLATFORM_MCP_TOKEN']}"}
        async with Client(StreamableHttpTransport(os.environ["PLATFORM_MCP_URL"], headers=headers)) as client:
            result = await client.call_tool(name, arguments, raise_on_error=False)
        text = " ".join(getattr(block, "text", "") for block in result.content)
        return f"error: {text}" if result.is_error else f"result: {text}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between streamed words")
    args = parser.parse_args()
    double = TerminalAgentDouble(port=args.port, agentapi_prefix="")  # at the root, as agentapi serves
    double.chunk_delay = args.chunk_delay
    print(f"terminal agent double (coder/agentapi's contract) on {double.url}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
