"""Escape sequences in a rule's string and bytes literals, checked as CEL defines them.

celpy reads an escape it does not know (``"\\d"``) as the two characters it is written with;
CEL refuses it, so a rule that other CEL implementations would reject, or read differently, is
refused when it is written. Raw literals (``r"\\d"``) have no escapes. The valid escapes are
``\\a \\b \\f \\n \\r \\t \\v \\\\ \\' \\" \\` \\?``, ``\\xHH``, ``\\uHHHH``, ``\\UHHHHHHHH`` and
three octal digits (``\\uHHHH`` and ``\\UHHHHHHHH`` only in strings, not bytes).
"""

from __future__ import annotations

import re

import lark

from controlplane.policy._limits import Problem

_LITERALS = frozenset({"STRING_LIT", "MLSTRING_LIT", "BYTES_LIT", "MLBYTES_LIT"})
_SIMPLE = "abfnrtv\\'\"`?"
_HEX = re.compile(r"[0-9A-Fa-f]")
_OCTAL = re.compile(r"[0-3][0-7]{2}")


def _bad_escape(body: str, is_bytes: bool) -> tuple[int, str] | None:
    """The offset and text of the first invalid escape in a literal's body, or None."""
    i = 0
    while i < len(body):
        if body[i] != "\\":
            i += 1
            continue
        nxt = body[i + 1 : i + 2]
        if nxt and nxt in _SIMPLE:
            i += 2
            continue
        width = {"x": 2, "X": 2, "u": 4, "U": 8}.get(nxt)
        if width is not None and not (is_bytes and nxt in "uU"):
            digits = body[i + 2 : i + 2 + width]
            if len(digits) == width and all(_HEX.match(d) for d in digits):
                if nxt == "U" and int(digits, 16) > 0x10FFFF:
                    return i, body[i : i + 2 + width]
                i += 2 + width
                continue
            return i, body[i : i + 2 + width]
        if _OCTAL.match(body, i + 1):
            i += 4
            continue
        return i, body[i : i + 2]
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
        bad = _bad_escape(body, "b" in flags)
        if bad is not None:
            offset, escape = bad
            column = (token.column or 1) + len(flags) + width + offset
            return Problem(
                f"invalid escape sequence {escape!r} in a literal",
                "CEL knows \\a \\b \\f \\n \\r \\t \\v \\\\ \\' \\\" \\` \\?, \\xHH, \\uHHHH, "
                "\\UHHHHHHHH and three octal digits; write a backslash as \\\\ or use a raw "
                'string (r"...")',
                token.line or 1,
                column,
            )
    return None
