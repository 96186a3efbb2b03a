"""Command templates: INI property files, one per tool, rendered to argv lists.

A template line such as ``blockAttachCmd = xl block-attach <domUId> phy:<dom0Dev> <domUDev> w``
is split into argv once, when it is loaded (``shlex.split``). Rendering substitutes placeholders
token by token, so a value can never add or split an argument. A value holding a shell
metacharacter, a control character or (when it fills a whole argument) a leading ``-`` is
refused, because templates may also run through a remote shell (SSH) and a value must never turn
into an option. Nothing here runs a command.
"""

from __future__ import annotations

import configparser
import importlib.resources
import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from hostcmds.errors import MissingValueError, TemplateError, UnsafeValueError

PLACEHOLDER = re.compile(r"<([A-Za-z][A-Za-z0-9_]*)>")

# A template token that is exactly one of these means its author expected a shell.
SHELL_OPERATORS = frozenset(
    {"|", "||", "&", "&&", ";", ";;", "<", "<<", "<<<", ">", ">>", ">&", "&>", "2>", "2>&1"}
)

# Characters a substituted value may never contain: every character a POSIX shell treats
# specially (word splitting, quoting, expansion, globbing, redirection, comments, history).
UNSAFE_CHARACTERS = frozenset(" \t|&;()<>$`\\\"'*?[]{}~!#")

Value = str | int


@dataclass(frozen=True)
class Slot:
    """A placeholder inside a token."""

    name: str


Part = str | Slot


@dataclass(frozen=True)
class Template:
    """One command line, split into tokens; each token is literal text and placeholders."""

    name: str
    text: str
    tokens: tuple[tuple[Part, ...], ...]

    @property
    def placeholders(self) -> frozenset[str]:
        return frozenset(p.name for token in self.tokens for p in token if isinstance(p, Slot))

    def render(self, values: Mapping[str, Value] | None = None, /, **more: Value) -> list[str]:
        """Return argv with every placeholder replaced; values not named by the template are
        ignored (an overridden line may use fewer)."""
        given: dict[str, Value] = {**(values or {}), **more}
        argv: list[str] = []
        for token in self.tokens:
            whole = len(token) == 1 and isinstance(token[0], Slot)
            argv.append("".join(self._fill(part, given, whole) for part in token))
        return argv

    def _fill(self, part: Part, given: Mapping[str, Value], whole: bool) -> str:
        if isinstance(part, str):
            return part
        if part.name not in given:
            raise MissingValueError(self.name, part.name)
        value = given[part.name]
        text = str(value)
        check_value(part.name, text, whole_argument=whole)
        return text


def check_value(name: str, text: str, *, whole_argument: bool) -> None:
    """Raise UnsafeValueError if ``text`` may not be substituted into a command argument."""
    if not text:
        raise UnsafeValueError(name, "empty")
    for ch in text:
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise UnsafeValueError(name, f"control character {ord(ch):#04x}")
        if ch in UNSAFE_CHARACTERS:
            raise UnsafeValueError(name, f"shell metacharacter {ch!r}")
    if whole_argument and text.startswith("-"):
        raise UnsafeValueError(name, "a whole argument may not start with '-'")


def parse_template(name: str, text: str) -> Template:
    """Split one template line into tokens of literal text and placeholders."""
    try:
        words = shlex.split(text, comments=False, posix=True)
    except ValueError as exc:
        raise TemplateError(f"template {name!r} cannot be split: {exc}") from exc
    if not words:
        raise TemplateError(f"template {name!r} is empty")
    tokens: list[tuple[Part, ...]] = []
    for word in words:
        if word in SHELL_OPERATORS or word.startswith("$("):
            raise TemplateError(
                f"template {name!r} uses shell syntax {word!r}; commands never run in a shell"
            )
        tokens.append(_split_token(word))
    if any(isinstance(p, Slot) for p in tokens[0]):
        raise TemplateError(f"template {name!r}: the program name cannot be a placeholder")
    return Template(name=name, text=text, tokens=tuple(tokens))


def _split_token(word: str) -> tuple[Part, ...]:
    parts: list[Part] = []
    pos = 0
    for match in PLACEHOLDER.finditer(word):
        if match.start() > pos:
            parts.append(word[pos : match.start()])
        parts.append(Slot(match.group(1)))
        pos = match.end()
    if pos < len(word):
        parts.append(word[pos:])
    return tuple(parts)


class CommandTemplates:
    """Every tool's templates, by tool (INI section) and key."""

    def __init__(self, tools: Mapping[str, Mapping[str, Template]]) -> None:
        self._tools = {tool: dict(keys) for tool, keys in tools.items()}

    def tools(self) -> list[str]:
        return sorted(self._tools)

    def keys(self, tool: str) -> list[str]:
        return sorted(self._section(tool))

    def get(self, tool: str, key: str) -> Template:
        section = self._section(tool)
        if key not in section:
            raise TemplateError(f"no template {key!r} for tool {tool!r}")
        return section[key]

    def render(
        self, tool: str, key: str, values: Mapping[str, Value] | None = None, /, **more: Value
    ) -> list[str]:
        return self.get(tool, key).render(values, **more)

    def require(self, tool: str, keys: Iterable[str]) -> None:
        """Fail at start-up, not at first use, when a profile lacks a template a driver needs."""
        section = self._section(tool)
        missing = sorted(set(keys) - set(section))
        if missing:
            raise TemplateError(f"tool {tool!r} lacks templates: {', '.join(missing)}")

    def _section(self, tool: str) -> Mapping[str, Template]:
        try:
            return self._tools[tool]
        except KeyError:
            raise TemplateError(f"no command templates for tool {tool!r}") from None


class _CaseKeepingParser(configparser.ConfigParser):
    """A ConfigParser that keeps keys as written (templates use lowerCamel keys)."""

    def optionxform(self, optionstr: str) -> str:
        return optionstr


def _new_parser() -> configparser.ConfigParser:
    return _CaseKeepingParser(
        interpolation=None, delimiters=("=",), comment_prefixes=("#", ";"), strict=True
    )


def read_ini(text: str, source: str) -> dict[str, dict[str, str]]:
    """Parse one INI property file into {section: {key: template text}}."""
    parser = _new_parser()
    try:
        parser.read_string(text, source=source)
    except configparser.Error as exc:
        raise TemplateError(f"{source}: {exc}") from exc
    return {section: dict(parser.items(section)) for section in parser.sections()}


def shipped_sources() -> dict[str, dict[str, str]]:
    """The templates shipped with the package (hostcmds/*.ini), unparsed."""
    merged: dict[str, dict[str, str]] = {}
    for entry in sorted(importlib.resources.files(__package__).iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".ini"):
            continue
        for section, keys in read_ini(entry.read_text(encoding="utf-8"), entry.name).items():
            if section in merged:
                raise TemplateError(f"{entry.name}: tool {section!r} is defined twice")
            merged[section] = keys
    return merged


def load_templates(
    overrides: Mapping[str, Mapping[str, str]] | None = None,
) -> CommandTemplates:
    """Load the shipped templates and apply the user's overrides.

    ``overrides`` maps tool -> key -> template text. A key unknown to a shipped tool is refused
    (a typo would otherwise go unnoticed); a tool that is not shipped is added whole, which is how
    a new VMM or volume-server profile is described without code.
    """
    sources = shipped_sources()
    for tool, keys in (overrides or {}).items():
        if tool in sources:
            unknown = sorted(set(keys) - set(sources[tool]))
            if unknown:
                raise TemplateError(
                    f"override for tool {tool!r} names unknown templates: {', '.join(unknown)}"
                )
            sources[tool] = {**sources[tool], **keys}
        else:
            sources[tool] = dict(keys)
    return CommandTemplates(
        {
            tool: {key: parse_template(f"{tool}.{key}", text) for key, text in keys.items()}
            for tool, keys in sources.items()
        }
    )
