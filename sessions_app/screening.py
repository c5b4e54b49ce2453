"""Prompt-injection screening for system prompt layers and caller-supplied variables.

A heuristic, and only one layer of defence: it recognises the common, published shapes of prompt
injection (instruction overrides, role and delimiter impersonation, requests to reveal the
prompt, invisible and direction-changing characters, oversized content) and says what it found.
It cannot recognise every paraphrase, other languages, or an attack spread across variables; and
a model can be steered by text no pattern catches. What an organization does with a finding is
its setting (`reject`: a 400 naming each finding; `flag`: kept, shown and audited).

Written here rather than taken from a library: the screening packages on PyPI (rebuff, llm-guard,
vigil) call a model or load a classifier (hundreds of MB, seconds per call), and composing a
prompt has a budget under a millisecond. These patterns are compiled once and run on text
normalised once (NFKC, case folded, invisible characters removed, whitespace collapsed), so that
"I\u200bgnore" or full-width letters do not slip past them.
"""

import re
import unicodedata
from dataclasses import asdict, dataclass

# Characters that change what a reader sees without being seen: zero-width, bidirectional
# controls (Trojan Source), and Unicode tag characters (invisible ASCII, "ASCII smuggling").
_INVISIBLE = re.compile(
    "[\u200b-\u200d\u2060-\u2064\ufeff\u00ad\u180e]"  # zero-width and soft hyphen
)
_BIDI = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")
_TAGS = re.compile("[\U000e0000-\U000e007f]")

_OBJECT = (
    r"(?:instructions?|prompts?|rules?|directions?|directives?|guidelines?|guardrails?|constraints?"
    r"|commands?|orders?|system messages?|context|programming|policies|polic(?:y|ies))"
)
_EARLIER = r"(?:previous|prior|preceding|above|earlier|foregoing|initial|original|system|old|existing|given|current)"

_PATTERNS = {
    "instruction_override": [
        # "ignore (all) (of) (the|your) previous instructions", "disregard the above rules"
        rf"\b(?:ignore|disregard|forget|override|overrule|bypass|skip|drop|abandon|neglect)\b"
        rf"(?:\s+(?:all|any|every|each|of|the|your|my|these|those|that|this|its|their))*"
        rf"(?:\s+{_EARLIER})+(?:\s+\w+)?\s+{_OBJECT}\b",
        # "ignore everything above", "forget everything you were told"
        r"\b(?:ignore|disregard|forget)\s+(?:everything|all|anything)\s+(?:above|before|previously|you\s+were\s+told"
        r"|you(?:'ve|\s+have)\s+been\s+told|prior)\b",
        # "from now on you will...", "you are now DAN", "new instructions:"
        r"\bfrom\s+now\s+on,?\s+(?:you|ignore|disregard|act|respond|answer)\b",
        r"\byou\s+are\s+(?:now|no\s+longer)\s+(?:a|an|in|the|free|unrestricted|dan\b|jailbroken|developer)",
        r"\b(?:new|updated|real|actual|override)\s+(?:system\s+)?instructions?\s*:",
        r"\b(?:do\s+anything\s+now|developer\s+mode\s+(?:enabled|on)|jailbreak(?:ed)?\s+mode)\b",
    ],
    "role_impersonation": [
        r"<\|\s*(?:im_start|im_end|system|user|assistant|endoftext|start_header_id|end_header_id|eot_id)\s*\|>",
        r"\[/?inst\]",
        r"<<\s*/?sys\s*>>",
        r"</?\s*(?:system|assistant|user|instructions?)\s*>",
        r"(?:^|\n)\s*(?:#{1,6}\s*)?(?:system|assistant|developer)\s*(?:prompt|message)?\s*:",
        r"(?:^|\n)\s*(?:human|user)\s*:\s*.*\n\s*assistant\s*:",
    ],
    "prompt_disclosure": [
        r"\b(?:reveal|show|print|repeat|output|display|dump|leak|expose|recite|tell\s+me|give\s+me|write\s+out)\b"
        r"(?:\s+(?:me|us|back|out|all|the|your|of|full|entire|exact|complete|hidden|secret|original|initial))*"
        r"\s+(?:system\s+(?:prompt|message|instructions?)|initial\s+(?:prompt|instructions?)|hidden\s+(?:prompt"
        r"|instructions?)|prompt\s+above|instructions\s+above|(?:prompt|instructions)\s+(?:you\s+were\s+given"
        r"|verbatim))",
        r"\brepeat\s+(?:the\s+)?(?:words|text|everything)\s+above\b",
        r"\bwhat\s+(?:is|are|was|were)\s+your\s+(?:system\s+prompt|initial\s+instructions|(?:original\s+)?instructions)\b",
    ],
}
# Words without which a kind's patterns cannot match: a substring search for them (fast, in C)
# decides whether its regular expression runs at all.
_TRIGGERS = {
    "instruction_override": (
        "ignore", "disregard", "forget", "override", "overrule", "bypass", "skip", "drop", "abandon", "neglect",
        "from now on", "you are now", "you are no longer", "instruction", "do anything now", "developer mode",
        "jailbreak",
    ),
    "role_impersonation": ("<", "[inst", "[/inst", "system", "assistant", "developer"),
    "prompt_disclosure": ("prompt", "instruction", "above"),
}  # fmt: skip
_COMPILED = {
    code: re.compile("|".join(f"(?:{pattern})" for pattern in patterns), re.IGNORECASE)
    for code, patterns in _PATTERNS.items()
}
_MESSAGES = {
    "instruction_override": "It tells the model to ignore or replace its instructions.",
    "role_impersonation": "It imitates a chat role or a model's message delimiters.",
    "prompt_disclosure": "It asks the model to reveal its prompt or instructions.",
    "invisible_characters": "It contains invisible characters (zero-width or tag characters).",
    "bidi_control": "It contains characters that reorder how text is displayed (bidirectional controls).",
    "oversized": "It is longer than allowed.",
}


@dataclass(frozen=True)
class Finding:
    code: str
    message: str
    excerpt: str = ""  # what matched, shortened (never more than 80 characters)
    where: str = ""  # which layer or variable, set by the caller

    def as_dict(self) -> dict:
        return asdict(self)


def normalise(text: str) -> str:
    """What the patterns read: NFKC, case folded, without invisible characters, spaces collapsed
    (line breaks kept: some patterns look at line starts)."""
    text = unicodedata.normalize("NFKC", text)
    text = _TAGS.sub("", _BIDI.sub("", _INVISIBLE.sub("", text))).casefold()
    return re.sub(r"[^\S\n]+", " ", text)


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 80 else text[:77] + "..."


def screen(text: str, *, where: str = "", max_length: int | None = None) -> list[Finding]:
    """Every kind of finding in `text`, one per kind (the first match shown), in a fixed order."""
    findings = []
    if max_length is not None and len(text) > max_length:
        findings.append(Finding("oversized", f"{_MESSAGES['oversized']} ({len(text)} > {max_length})", "", where))
    if _INVISIBLE.search(text) or _TAGS.search(text):
        findings.append(Finding("invisible_characters", _MESSAGES["invisible_characters"], "", where))
    if _BIDI.search(text):
        findings.append(Finding("bidi_control", _MESSAGES["bidi_control"], "", where))
    plain = normalise(text)
    for code, pattern in _COMPILED.items():
        if not any(trigger in plain for trigger in _TRIGGERS[code]):
            continue
        match = pattern.search(plain)
        if match is not None:
            findings.append(Finding(code, _MESSAGES[code], _excerpt(match.group(0)), where))
    return findings
