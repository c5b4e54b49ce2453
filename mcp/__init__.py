"""The MCP app: server configurations, the pool of upstream sessions, the tool catalogue.

This package shares its name with the MCP Python SDK (`mcp` on PyPI), which the platform uses as
its MCP client and fastmcp builds on. DESIGN.md puts the app at mcp/, and the project directory
comes first on sys.path, so `import mcp` finds this package. To keep both importable, the
package's path is extended with the SDK's directory (the SDK's subpackages `client`, `server`,
`shared`, `types`, `os` and `cli` are found there) and the SDK's own __init__ runs in this
namespace, so `from mcp import Client` is the SDK's. The app's modules must not take those six
names; tests/mcp/test_package.py checks that both halves import.
"""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _sdk_directory() -> str | None:
    for entry in sys.path:
        candidate = os.path.abspath(os.path.join(entry or os.curdir, "mcp"))
        if candidate != _HERE and os.path.isfile(os.path.join(candidate, "__init__.py")):
            return candidate
    return None


_SDK = _sdk_directory()
if _SDK is not None:
    __path__.append(_SDK)
    _init = os.path.join(_SDK, "__init__.py")
    with open(_init, encoding="utf-8") as _source:
        exec(compile(_source.read(), _init, "exec"))  # noqa: S102 (the installed SDK's own __init__)
