"""System prompt templates: Jinja2's immutable sandbox, with limits on what a template may cost.

Prompt layers are written by operators, organization admins and every member for themself, and
rendered with variables a caller sends: the template language must not reach Python (attributes,
the filesystem, imports) and a template must not be able to spend unbounded time or memory.

- The engine is Jinja2's `ImmutableSandboxedEnvironment` (no underscore attributes, no mutation of
  lists or dicts), with `StrictUndefined`: a variable the template names and nobody supplied is an
  error, not an empty string. No loader: `include`, `import` and `extends` find nothing.
- What can make text or lists grow is bounded to MAX_OUTPUT characters (or MAX_ITEMS items): the
  `~` operator (compiled to a checked join), `+`, `*`, `**` and `%` (intercepted; `%` formatting
  of strings is refused), calls (macros, loop helpers and a short list of harmless string and dict
  methods; anything else is refused), and filters (an allowlist, each wrapped: numeric arguments
  and results checked). `range` is capped at MAX_ITEMS and checks the deadline as it counts.
- Time: the deadline (`timeout`) is checked at every call, every filter, every `range` step and
  every output chunk; loops may nest at most MAX_LOOP_DEPTH deep within one template body, so a
  stretch without any of those checks is bounded too (MAX_ITEMS ** MAX_LOOP_DEPTH iterations).
  Variables are copied into plain values with the same bounds before rendering.

Why not a second template language: Jinja2 is what the issue names and what prompt authors know;
its sandbox is maintained against escapes. The limits above are the part it leaves to its users.
"""

import contextvars
import functools
import math
import time

from jinja2 import StrictUndefined, TemplateError, nodes
from jinja2.compiler import CodeGenerator
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.runtime import LoopContext, Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_OUTPUT = 100_000  # characters in any string a template makes, and in its output
MAX_ITEMS = 1_000  # items in any list a template makes or receives; range() steps
MAX_LOOP_DEPTH = 2
MAX_NUMBER = 10**15
MAX_VARIABLE_DEPTH = 8


class TemplateProblem(Exception):
    """A template that cannot be saved or rendered. `code`: template_error, undefined_variable,
    template_refused, template_limit."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class _Limit(SecurityError):
    """A limit was reached while rendering (time or size)."""


# -- bounds ------------------------------------------------------------------------------------

# When the rendering under way must end (per thread and task: the environment is shared).
_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("agentapi_prompt_deadline", default=None)


def _deadline_check() -> None:
    deadline = _deadline.get()
    if deadline is not None and time.monotonic() > deadline:
        raise _Limit("The template took longer to render than allowed.")


def _bounded(value):
    """The value, if it is within the limits for what a template may make."""
    if isinstance(value, str) and len(value) > MAX_OUTPUT:
        raise _Limit(f"The template made a text longer than {MAX_OUTPUT} characters.")
    if isinstance(value, (list, tuple, dict)) and len(value) > MAX_ITEMS:
        raise _Limit(f"The template made a list longer than {MAX_ITEMS} items.")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_NUMBER:
        raise _Limit("The template made a number larger than allowed.")
    return value


def _size(value) -> int:
    return len(value) if isinstance(value, (str, list, tuple, dict)) else 0


def _checked_binop(name: str, left, right):
    if name == "%" and isinstance(left, str):
        raise SecurityError("String formatting with % is not available; use filters.")
    if name == "*":
        for sequence, count in ((left, right), (right, left)):
            if _size(sequence) and isinstance(count, int) and _size(sequence) * max(count, 0) > MAX_OUTPUT:
                raise _Limit("The template made a text or list longer than allowed.")
    if name == "+" and _size(left) + _size(right) > MAX_OUTPUT:
        raise _Limit("The template made a text or list longer than allowed.")
    if name == "**" and isinstance(right, (int, float)) and (abs(right) > 64 or abs(left) > MAX_NUMBER):
        raise _Limit("The template made a number larger than allowed.")
    return _bounded(ImmutableSandboxedEnvironment.default_binop_table[name](left, right))


# Methods a template may call on text and mappings (none of them can make more than it is given).
_SAFE_METHODS = {
    (str, name)
    for name in (
        "upper", "lower", "title", "capitalize", "strip", "lstrip", "rstrip", "startswith", "endswith",
        "split", "splitlines", "count", "find", "isdigit", "isalpha", "isspace",
    )
} | {(dict, name) for name in ("items", "keys", "values", "get")}  # fmt: skip


def _range(*args):
    numbers = range(*args)
    if len(numbers) > MAX_ITEMS:
        raise _Limit(f"range() may count at most {MAX_ITEMS} steps.")
    for step, number in enumerate(numbers):
        if step % 64 == 0:
            _deadline_check()
        yield number


# -- filters -----------------------------------------------------------------------------------

_FILTERS = (
    "abs", "capitalize", "count", "d", "default", "dictsort", "first", "float", "indent", "int", "items",
    "join", "last", "length", "list", "lower", "map", "max", "min", "reject", "rejectattr", "replace",
    "reverse", "round", "select", "selectattr", "sort", "string", "sum", "title", "tojson", "trim",
    "truncate", "unique", "upper", "wordcount",
)  # fmt: skip


def _wrapped_filter(name: str, function):
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        _deadline_check()
        for argument in (*args, *kwargs.values()):
            if isinstance(argument, int) and not isinstance(argument, bool) and abs(argument) > MAX_OUTPUT:
                raise _Limit(f"The filter {name!r} was given a number larger than allowed.")
        if name == "replace" and len(args) >= 3 and isinstance(args[0], str):
            text, old, new = (str(value) for value in args[0:3])
            occurrences = len(text) + 1 if old == "" else text.count(old)
            if len(text) + occurrences * max(0, len(new) - len(old)) > MAX_OUTPUT:
                raise _Limit("The template made a text longer than allowed.")
        if name == "indent" and args and isinstance(args[0], str):
            width = args[1] if len(args) > 1 else kwargs.get("width", 4)
            pad = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
            if len(args[0]) + (args[0].count("\n") + 1) * pad > MAX_OUTPUT:
                raise _Limit("The template made a text longer than allowed.")
        if name == "join" and args and isinstance(args[0], (list, tuple)):
            if sum(_size(item) if isinstance(item, str) else 24 for item in args[0]) > MAX_OUTPUT:
                raise _Limit("The template made a text longer than allowed.")
        result = function(*args, **kwargs)
        if hasattr(result, "__next__"):  # a lazy filter (map, select...): bounded as it is read
            result = list(_take(result))
        return _bounded(result)

    return wrapper


def _take(iterator):
    for count, item in enumerate(iterator):
        if count >= MAX_ITEMS:
            raise _Limit(f"The template made a list longer than {MAX_ITEMS} items.")
        yield item


# -- the environment ---------------------------------------------------------------------------


class _Generator(CodeGenerator):
    def visit_Concat(self, node: nodes.Concat, frame) -> None:
        # `a ~ b ~ ...` as a join that checks the size of what it makes (the sandbox leaves it).
        self.write("environment.bounded_join((")
        for argument in node.nodes:
            self.visit(argument, frame)
            self.write(", ")
        self.write("))")


class PromptEnvironment(ImmutableSandboxedEnvironment):
    code_generator_class = _Generator
    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(self):
        super().__init__(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True, cache_size=256)
        self.filters = {name: _wrapped_filter(name, self.filters[name]) for name in _FILTERS}
        self.globals = {"range": _range}  # no namespace(), lipsum(), dict(), cycler(), joiner()

    def bounded_join(self, parts) -> str:
        total = 0
        strings = []
        for part in parts:
            text = str(part)
            total += len(text)
            if total > MAX_OUTPUT:
                raise _Limit(f"The template made a text longer than {MAX_OUTPUT} characters.")
            strings.append(text)
        return "".join(strings)

    def call_binop(self, context, operator_name: str, left, right):
        _deadline_check()
        return _checked_binop(operator_name, left, right)

    def call(__self, __context, __obj, *args, **kwargs):  # Jinja's own signature
        _deadline_check()
        owner = getattr(__obj, "__self__", None)
        allowed = (
            __obj is _range
            or isinstance(__obj, Macro)
            or (isinstance(owner, LoopContext) and __obj.__name__ in ("cycle", "changed"))
            or any(isinstance(owner, kind) and __obj.__name__ == name for kind, name in _SAFE_METHODS)
        )
        if not allowed:
            raise SecurityError(f"Calling {getattr(__obj, '__name__', type(__obj).__name__)!r} is not available.")
        for argument in (*args, *kwargs.values()):
            _bounded(argument)
        return _bounded(super().call(__context, __obj, *args, **kwargs))


ENVIRONMENT = PromptEnvironment()


# -- checking and rendering ----------------------------------------------------------------------


def _loop_depth(node, depth: int = 0) -> int:
    """How deep `for` loops nest in this body (a macro's body is its own)."""
    deepest = depth
    for child in node.iter_child_nodes():
        if isinstance(child, nodes.Macro):
            deepest = max(deepest, _loop_depth(child, 0))
        else:
            deepest = max(deepest, _loop_depth(child, depth + isinstance(child, nodes.For)))
    return deepest


@functools.lru_cache(maxsize=512)
def _compiled(source: str):
    try:
        tree = ENVIRONMENT.parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateProblem("template_error", f"Line {exc.lineno}: {exc.message}") from None
    if _loop_depth(tree) > MAX_LOOP_DEPTH:
        raise TemplateProblem("template_refused", f"Loops may nest at most {MAX_LOOP_DEPTH} deep.")
    if any(
        isinstance(node, (nodes.Include, nodes.Import, nodes.FromImport, nodes.Extends))
        for node in tree.find_all(nodes.Stmt)
    ):
        raise TemplateProblem("template_refused", "A prompt cannot include, import or extend other templates.")
    try:
        return ENVIRONMENT.from_string(tree)
    except (TemplateError, SecurityError) as exc:
        raise TemplateProblem("template_error", str(exc)[:300]) from None


def check(source: str) -> None:
    """Raise TemplateProblem when the source is not a template that may be saved."""
    if len(source) > MAX_OUTPUT:
        raise TemplateProblem("template_refused", f"A prompt is at most {MAX_OUTPUT} characters.")
    _compiled(source)


def plain(value, depth: int = 0):
    """A caller's value as plain data within the template limits: text, numbers, booleans,
    None, lists (as tuples) and mappings with text keys. Raises TemplateProblem otherwise."""
    if depth > MAX_VARIABLE_DEPTH:
        raise TemplateProblem("template_refused", f"Variables may nest at most {MAX_VARIABLE_DEPTH} deep.")
    if value is None or isinstance(value, (bool, str)):
        if isinstance(value, str) and len(value) > MAX_OUTPUT:
            raise TemplateProblem("template_refused", f"A variable is at most {MAX_OUTPUT} characters.")
        return value
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value) or abs(value) > MAX_NUMBER:
            raise TemplateProblem("template_refused", "A variable's number is out of range.")
        return value
    if isinstance(value, (list, tuple)):
        if len(value) > MAX_ITEMS:
            raise TemplateProblem("template_refused", f"A variable's list has at most {MAX_ITEMS} items.")
        return tuple(plain(item, depth + 1) for item in value)
    if isinstance(value, dict):
        if len(value) > MAX_ITEMS:
            raise TemplateProblem("template_refused", f"A variable's mapping has at most {MAX_ITEMS} keys.")
        return {str(key): plain(item, depth + 1) for key, item in value.items()}
    raise TemplateProblem("template_refused", f"A variable of type {type(value).__name__} is not accepted.")


def render(source: str, variables: dict, *, timeout: float = 0.05) -> str:
    """The template rendered with `variables` (made plain()), in at most `timeout` seconds and
    MAX_OUTPUT characters. Raises TemplateProblem."""
    template = _compiled(source)
    values = plain(variables)
    token = _deadline.set(time.monotonic() + timeout)
    try:
        output, size = [], 0
        for chunk in template.generate(values):
            size += len(chunk)
            if size > MAX_OUTPUT:
                raise _Limit(f"The prompt would be longer than {MAX_OUTPUT} characters.")
            output.append(chunk)
            _deadline_check()
        return "".join(output)
    except UndefinedError as exc:
        raise TemplateProblem("undefined_variable", str(exc)[:300]) from None
    except _Limit as exc:
        raise TemplateProblem("template_limit", str(exc)) from None
    except SecurityError as exc:
        raise TemplateProblem("template_refused", str(exc)[:300]) from None
    except (TemplateError, ArithmeticError, TypeError, ValueError, LookupError, RecursionError) as exc:
        raise TemplateProblem("template_error", f"{type(exc).__name__}: {str(exc)[:300]}") from None
    finally:
        _deadline.reset(token)
