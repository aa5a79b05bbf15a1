"""Reading YAML as located nodes: every value keeps its line and column.

PyYAML's composer gives nodes with marks; these helpers check shapes (mapping, list,
string), refuse unknown and duplicate keys (PyYAML itself accepts duplicates
silently) and turn every problem into a SpecError at the right place.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import yaml

from opgen.errors import Location, SpecError, did_you_mean

_KIND_NAMES = {
    yaml.MappingNode: "a mapping",
    yaml.SequenceNode: "a list",
    yaml.ScalarNode: "a scalar",
}


def where(path: str, node: yaml.Node) -> Location:
    return Location(path, node.start_mark.line + 1, node.start_mark.column + 1)


# YAML features a spec has no use for, refused before composing: an alias can make the node
# graph cyclic or exponentially large ("billion laughs"), and a tag would give a value
# another meaning than the one its text reads as.
_REFUSED_TOKENS = {yaml.AnchorToken: "anchors (&name)", yaml.AliasToken: "aliases (*name)",
                   yaml.TagToken: "tags (!tag)"}


def compose(path: str, text: str) -> yaml.Node:
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            refused = _REFUSED_TOKENS.get(type(token))
            if refused is not None:
                mark = token.start_mark
                raise SpecError(Location(path, mark.line + 1, mark.column + 1),
                                f"YAML {refused} are not allowed in a spec")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise SpecError(Location(path, line, col), f"invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:  # errors without a mark
        raise SpecError(Location(path, 1, 1), f"invalid YAML: {exc}") from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise SpecError(Location(path, 1, 1), "invalid YAML: collections nested too deeply") from None
    if node is None:
        raise SpecError(Location(path, 1, 1), "the spec is empty")
    _check_text(path, node)
    return node


def _unwritable(ch: str) -> str | None:
    """Why a character may not stand in spec text, or None. YAML's escapes ("\\0",
    "\\ud800") can spell any code point; these no generated file can carry as plain text."""
    code = ord(ch)
    if code == 0:
        return "a NUL character"
    if 0xD800 <= code <= 0xDFFF:
        return "a lone surrogate"
    if 0x202A <= code <= 0x202E or 0x2066 <= code <= 0x2069 or code in (0x200E, 0x200F, 0x061C):
        return "a bidirectional-text control character"  # can make code read differently than it runs
    if (code < 0x20 and ch not in "\n\t") or 0x7F <= code <= 0x9F or code in (0x2028, 0x2029, 0xFEFF):
        return "a control character"
    return None


def _check_text(path: str, root: yaml.Node) -> None:
    """Every scalar (keys too) is text that generated files can hold."""
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.ScalarNode):
            for k, ch in enumerate(node.value):
                problem = _unwritable(ch)
                if problem is not None:
                    raise SpecError(_char_location(path, node, k), f"the text holds {problem} "
                                                                    f"(U+{ord(ch):04X}), which is not allowed")
        elif isinstance(node, yaml.MappingNode):
            stack.extend(item for pair in reversed(node.value) for item in reversed(pair))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(reversed(node.value))


def _char_location(path: str, node: yaml.ScalarNode, index: int) -> Location:
    """The place of character ``index`` of a one-line plain scalar; otherwise the scalar's."""
    at = where(path, node)
    if node.style is None and "\n" not in node.value[:index] and node.start_mark.line == node.end_mark.line:
        return Location(path, at.line, at.col + index)
    return at


def describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.ScalarNode):
        return f"'{node.value}'" if node.value else "an empty value"
    return _KIND_NAMES.get(type(node), "a value")


class Mapping:
    """A YAML mapping whose keys were checked against the allowed ones."""

    def __init__(self, path: str, node: yaml.Node, what: str, required: Iterable[str], optional: Iterable[str]):
        if not isinstance(node, yaml.MappingNode):
            raise SpecError(where(path, node), f"{what} must be a mapping, got {describe(node)}")
        self.path, self.yaml_node, self.what = path, node, what
        required, optional = tuple(required), tuple(optional)
        allowed = required + optional
        self._items: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise SpecError(where(path, key_node), f"keys of {what} must be plain names")
            key = key_node.value
            if key in self._items:
                first = where(path, self._items[key][0])
                raise SpecError(where(path, key_node), f"duplicate key '{key}' in {what} (first at line {first.line})")
            if key not in allowed:
                hint = did_you_mean(key, allowed) or f"; allowed keys: {', '.join(allowed)}"
                raise SpecError(where(path, key_node), f"unknown key '{key}' in {what}{hint}")
            self._items[key] = (key_node, value_node)
        for key in required:
            if key not in self._items:
                raise SpecError(where(path, node), f"{what} is missing the required key '{key}'")

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def node(self, key: str) -> yaml.Node:
        return self._items[key][1]

    def key_location(self, key: str) -> Location:
        return where(self.path, self._items[key][0])

    def location(self, key: str) -> Location:
        return where(self.path, self._items[key][1])

    def string(self, key: str, default: str | None = None) -> str:
        if key not in self._items:
            assert default is not None, key
            return default
        return scalar_text(self.path, self.node(key), f"'{key}' in {self.what}")

    def sequence(self, key: str) -> list[yaml.Node]:
        return sequence(self.path, self.node(key), f"'{key}' in {self.what}")


def scalar_text(path: str, node: yaml.Node, what: str) -> str:
    if not isinstance(node, yaml.ScalarNode):
        raise SpecError(where(path, node), f"{what} must be text, got {describe(node)}")
    return node.value


def sequence(path: str, node: yaml.Node, what: str) -> list[yaml.Node]:
    if not isinstance(node, yaml.SequenceNode):
        raise SpecError(where(path, node), f"{what} must be a list, got {describe(node)}")
    return list(node.value)


def is_plain(node: yaml.Node) -> bool:
    """True for an unquoted scalar (whose text YAML would read as a number or bool)."""
    return isinstance(node, yaml.ScalarNode) and node.style is None


# The literals a spec may write for a number (no inf, nan, underscores or leading zeros: 012
# means 12 to some readers, 10 to others).
FLOAT_LITERAL = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?\Z")
INT_LITERAL = re.compile(r"[-+]?(0|[1-9]\d*)\Z")


def locator(path: str, node: yaml.ScalarNode):
    """(1-based line in the node's text, 0-based column) -> its Location in the spec file,
    past an opening quote: how expressions written in a scalar report their places."""
    quote = 1 if node.style in ("'", '"') else 0
    line0, col0 = node.start_mark.line + 1, node.start_mark.column + 1 + quote

    def locate(line: int, col: int) -> Location:
        return Location(path, line0 + line - 1, (col0 if line == 1 else 1) + col)

    return locate
