"""Spec text as data in every target: one escaping function per kind of place.

A spec is untrusted input. Its free text (summaries, docs, the spec folder's name, math
lines as written) reaches generated files only through these functions, each of which
makes the text inert where it lands: it cannot end a string, a comment or a table cell,
and cannot become markup. The loader has already refused what no escape can carry
(NUL, lone surrogates, control and bidirectional-override characters).
"""

from __future__ import annotations

import re

_ENTITY = re.compile(r"&(#?[A-Za-z0-9]+;)")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")
_HTML_OPEN = re.compile(r"<(?=[A-Za-z/!?])")
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`).*?(?<!`)\1(?!`)", re.S)


def one_line(text: str) -> str:
    """Runs of whitespace, newlines included, as one space."""
    return " ".join(text.split())


def py_string(text: str) -> str:
    """A double-quoted Python string literal holding ``text`` exactly."""
    return f'"{py_docstring_line(text)}"'


def _visible(ch: str) -> str:
    """A character as it may stand in a generated line: itself, or its Python escape."""
    return ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")


def py_docstring_line(text: str) -> str:
    """One line inside a plain (not raw) triple-quoted docstring: backslashes and quotes
    escaped, so no text can end the string or form an escape; ``__doc__`` reads ``text``."""
    return "".join("\\" + ch if ch in '\\"' else _visible(ch) for ch in text)


def py_docstring(lines: list[str], indent: str = "    ") -> list[str]:
    """A docstring literal as source lines, quotes included: raw when no line needs an
    escape (LaTeX in the source reads as written), else plain with every line escaped."""
    raw = all(line.isprintable() and '"' not in line for line in lines)
    body = [f"{indent}{line if raw else py_docstring_line(line)}" if line else "" for line in lines]
    quote = '"' * 3
    return [f"{indent}{'r' if raw else ''}{quote}", *body, f"{indent}{quote}"]


def py_comment(text: str) -> str:
    """The inside of a ``#`` comment: one line (a newline would end the comment)."""
    return "".join(map(_visible, one_line(text)))


def c_comment(text: str) -> str:
    """The inside of a C/CUDA ``/* */`` comment: one line, never closing the comment, and
    no backslash before the end (a line splice) or trigraph."""
    return py_comment(text).replace("*/", "* /").replace("??", "? ?")


def html_comment(text: str) -> str:
    """The inside of an HTML (Markdown) comment: no ``--``, so ``-->`` cannot occur."""
    text = py_comment(text)
    while "--" in text:
        text = text.replace("--", "- -")
    return text


def md_text(text: str) -> str:
    """Markdown prose: Markdown and LaTeX are kept (``&`` aligns equations, ``x <= 0``
    reads as written), HTML is shown as text, never as markup: no ``<`` can open a tag,
    comment or autolink, no ``&`` an entity. Code spans are left as they are: Markdown
    shows their text literally."""
    out, end = [], 0
    for span in _CODE_SPAN.finditer(text):
        out += [_prose(text[end:span.start()]), span.group(0)]
        end = span.end()
    return "".join(out + [_prose(text[end:])])


def _prose(text: str) -> str:
    return _HTML_OPEN.sub("&lt;", _ENTITY.sub(r"&amp;\1", text))


def md_block(text: str) -> str:
    """Markdown prose of several lines, as md_text, and closed: a code fence or a ``$$`` math
    block the text opens and never closes would swallow the rest of the page."""
    lines = md_text(text).split("\n")
    fence = None
    math_open = False
    for line in lines:
        match = _FENCE.match(line)
        if match and (fence is None or match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence)):
            fence = match.group(1) if fence is None else None
        elif fence is None and line.count("$$") % 2:
            math_open = not math_open
    if fence is not None:
        lines.append(fence)
    elif math_open:
        lines.append("$$")
    return "\n".join(lines)


def md_inline(text: str) -> str:
    """Markdown prose that must stay on one line (a list item, a heading)."""
    return md_text(one_line(text))


def md_cell(text: str) -> str:
    """A Markdown table cell: one line, and a ``|`` cannot start a new cell."""
    return md_inline(text).replace("|", "\\|")


def md_code(text: str) -> str:
    """An inline Markdown code span holding ``text`` literally, whatever backticks it has."""
    text = one_line(text)
    fence = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"
