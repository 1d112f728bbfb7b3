"""Escape sequences in a rule's string and bytes literals, checked as CEL defines them.

celpy reads an escape it does not know (``"\\d"``) as the two characters it is written with;
CEL refuses it, so a rule that other CEL implementations would reject, or read differently, is
refused when it is written. Raw literals (``r"\\d"``) have no escapes. The valid escapes are
``\\a \\b \\f \\n \\r \\t \\v \\\\ \\' \\" \\` \\?``, ``\\xHH``, ``\\uHHHH``, ``\\UHHHHHHHH`` and
three octal digits (``\\uHHHH`` and ``\\UHHHHHHHH`` only in strings, not bytes).

Some valid CEL is refused too, because celpy would read it differently: ``\\?`` and ``\\```
(kept as two characters: write ``?`` and `````), a line break inside a triple-quoted literal
(dropped: write ``\\n``), and a ``\\u`` or ``\\U`` escape of a surrogate (``\\ud83d``; not a
character: write ``\\U0001F600``).
"""

from __future__ import annotations

import re

import lark

from controlplane.policy._limits import Problem

_LITERALS = frozenset({"STRING_LIT", "MLSTRING_LIT", "BYTES_LIT", "MLBYTES_LIT"})
_SIMPLE = "abfnrtv\\'\"`?"
_HEX = re.compile(r"[0-9A-Fa-f]")
_OCTAL = re.compile(r"[0-3][0-7]{2}")


#: What an invalid escape is told.
_ESCAPES_HINT = (
    "CEL knows \\a \\b \\f \\n \\r \\t \\v \\\\ \\' \\\" \\` \\?, \\xHH, \\uHHHH, "
    "\\UHHHHHHHH and three octal digits; write a backslash as \\\\ or use a raw "
    'string (r"...")'
)
#: Escapes CEL defines but celpy keeps as the two characters written.
_MISREAD = frozenset("?`")


def _bad_escape(body: str, is_bytes: bool) -> tuple[int, str, str] | None:
    """The offset of the first escape in a literal's body that is invalid, or that celpy
    would misread, with what is wrong with it and a hint; or None."""
    i = 0
    while i < len(body):
        if body[i] != "\\":
            i += 1
            continue
        nxt = body[i + 1 : i + 2]
        if nxt and nxt in _MISREAD:
            return (
                i,
                f"unsupported escape sequence {body[i : i + 2]!r}",
                f"this server would read it as two characters; write {nxt} without the backslash",
            )
        if nxt and nxt in _SIMPLE:
            i += 2
            continue
        width = {"x": 2, "X": 2, "u": 4, "U": 8}.get(nxt)
        if width is not None and not (is_bytes and nxt in "uU"):
            digits = body[i + 2 : i + 2 + width]
            text = body[i : i + 2 + width]
            if len(digits) == width and all(_HEX.match(d) for d in digits):
                code = int(digits, 16)
                if nxt in "uU" and 0xD800 <= code <= 0xDFFF:
                    return (
                        i,
                        f"surrogate escape sequence {text!r}",
                        "a surrogate is not a character; write the character's code point "
                        "(\\U0001F600, not \\ud83d\\ude00)",
                    )
                if nxt == "U" and code > 0x10FFFF:
                    return i, f"invalid escape sequence {text!r}", _ESCAPES_HINT
                i += 2 + width
                continue
            return i, f"invalid escape sequence {text!r}", _ESCAPES_HINT
        if _OCTAL.match(body, i + 1):
            i += 4
            continue
        return i, f"invalid escape sequence {body[i : i + 2]!r}", _ESCAPES_HINT
    return None


def escape_problem(ast: lark.Tree) -> Problem | None:
    """Why a string or bytes literal of the rule is not valid CEL, or None."""
    for token in ast.scan_values(lambda v: isinstance(v, lark.Token) and v.type in _LITERALS):
        text = str(token)
        prefix = re.match(r"[rRbB]*", text)
        flags = prefix.group(0).lower() if prefix else ""
        if "r" in flags:
            continue
        quote = text[len(flags) : len(flags) + 3]
        width = 3 if quote in ('"""', "'''") else 1
        body = text[len(flags) + width : len(text) - width]
        if width == 3 and "\n" in body:
            # celpy drops a line break written inside a triple-quoted literal.
            return Problem(
                "a line break inside a triple-quoted literal",
                "this server would drop it; write \\n instead",
                token.line or 1,
                token.column or 1,
            )
        bad = _bad_escape(body, "b" in flags)
        if bad is not None:
            offset, problem, hint = bad
            column = (token.column or 1) + len(flags) + width + offset
            return Problem(f"{problem} in a literal", hint, token.line or 1, column)
    return None
