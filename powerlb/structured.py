"""A pure parser of RFC 8941 Structured Field Dictionaries (what a targeted Cache-Control field is).

:func:`parse_dictionary` follows the parsing algorithms of RFC 8941 section 4.2
for a Dictionary and the Items, Inner Lists and Parameters in it. Bare items
come out as Python values: Integer ``int``, Decimal ``float``, String ``str``,
Token :class:`Token` (a ``str``), Byte Sequence ``bytes``, Boolean ``bool``.
Any departure from the grammar raises :class:`StructuredError`: RFC 8941 has a
field that fails to parse ignored as a whole.
"""

from __future__ import annotations

import base64
import binascii
import string
from typing import Any, Dict, List, Tuple, Union

Parameters = Dict[str, Any]
#: An Item: a bare item and its parameters.
Item = Tuple[Any, Parameters]
#: A Dictionary member: a bare item or an Inner List (a list of Items), and its parameters.
Member = Tuple[Union[Any, List[Item]], Parameters]


class StructuredError(ValueError):
    """The field value is not a valid Structured Field Dictionary."""


class Token(str):
    """An sf-token, kept apart from an sf-string (RFC 8941 section 3.3.4)."""

    __slots__ = ()


_LCALPHA = frozenset(string.ascii_lowercase)
_KEY_START = _LCALPHA | {"*"}
_KEY_CHARS = _KEY_START | frozenset(string.digits + "_-.")
_TOKEN_START = frozenset(string.ascii_letters + "*")
_TCHAR = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")
_TOKEN_CHARS = _TCHAR | {":", "/"}
_BASE64 = frozenset(string.ascii_letters + string.digits + "+/=")
_DIGITS = frozenset(string.digits)


def parse_dictionary(data: bytes) -> Dict[str, Member]:
    """The members of the Dictionary ``data`` (field lines already joined with ``", "``), in order.

    A repeated key keeps its first position and its last value (RFC 8941
    section 4.2.2). Raises :class:`StructuredError` when ``data`` does not parse.
    """
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise StructuredError("not ASCII") from None
    return _Parser(text.strip(" ")).dictionary()


class _Parser:
    """One pass over a field value; ``pos`` is the next character to read."""

    __slots__ = ("pos", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def peek(self) -> str:
        return self.text[self.pos : self.pos + 1]

    def fail(self, what: str) -> StructuredError:
        return StructuredError(f"{what} at offset {self.pos}")

    def dictionary(self) -> Dict[str, Member]:
        members: Dict[str, Member] = {}
        text = self.text
        while self.pos < len(text):
            key = self.key()
            if self.peek() == "=":
                self.pos += 1
                members[key] = self.item_or_inner_list()
            else:
                members[key] = (True, self.parameters())
            self.skip(" \t")
            if self.pos == len(text):
                break
            if self.peek() != ",":
                raise self.fail("expected a comma")
            self.pos += 1
            self.skip(" \t")
            if self.pos == len(text):
                raise self.fail("trailing comma")
        return members

    def skip(self, chars: str) -> None:
        text = self.text
        while self.pos < len(text) and text[self.pos] in chars:
            self.pos += 1

    def item_or_inner_list(self) -> Member:
        if self.peek() != "(":
            return self.item()
        self.pos += 1
        items: List[Item] = []
        while True:
            self.skip(" ")
            if self.peek() == ")":
                self.pos += 1
                return items, self.parameters()
            items.append(self.item())
            if self.peek() not in (" ", ")"):
                raise self.fail("unterminated inner list")

    def item(self) -> Item:
        return self.bare_item(), self.parameters()

    def parameters(self) -> Parameters:
        params: Parameters = {}
        while self.peek() == ";":
            self.pos += 1
            self.skip(" ")
            key = self.key()
            value: Any = True
            if self.peek() == "=":
                self.pos += 1
                value = self.bare_item()
            params[key] = value
        return params

    def key(self) -> str:
        text, start = self.text, self.pos
        if text[start : start + 1] not in _KEY_START:
            raise self.fail("expected a key")
        end = start + 1
        while end < len(text) and text[end] in _KEY_CHARS:
            end += 1
        self.pos = end
        return text[start:end]

    def bare_item(self) -> Any:
        char = self.peek()
        if char == "-" or (char and char in _DIGITS):
            return self.number()
        if char == '"':
            return self.string()
        if char and char in _TOKEN_START:
            return self.token()
        if char == ":":
            return self.byte_sequence()
        if char == "?":
            return self.boolean()
        raise self.fail("expected an item")

    def number(self) -> Union[int, float]:
        text, start = self.text, self.pos
        sign = 1
        if text[start] == "-":
            sign, start = -1, start + 1
        end, dot = start, -1
        while end < len(text):
            char = text[end]
            if char in _DIGITS:
                end += 1
            elif char == "." and dot < 0:
                if end - start > 12:
                    raise self.fail("decimal too long")
                dot = end
                end += 1
            else:
                break
            if (dot < 0 and end - start > 15) or end - start > 16:
                raise self.fail("number too long")
        self.pos = end
        digits = text[start:end]
        if digits[:1] not in _DIGITS:
            raise self.fail("expected a digit")
        if dot < 0:
            return sign * int(digits)
        if not 1 <= end - dot - 1 <= 3:
            raise self.fail("a decimal has one to three fractional digits")
        return sign * float(digits)

    def string(self) -> str:
        text = self.text
        self.pos += 1
        out = []
        while self.pos < len(text):
            char = text[self.pos]
            self.pos += 1
            if char == "\\":
                escaped = self.peek()
                if escaped not in ('"', "\\"):
                    raise self.fail("bad escape in string")
                out.append(escaped)
                self.pos += 1
            elif char == '"':
                return "".join(out)
            elif not " " <= char <= "~":
                raise self.fail("bad character in string")
            else:
                out.append(char)
        raise self.fail("unterminated string")

    def token(self) -> Token:
        text, start = self.text, self.pos
        end = start + 1
        while end < len(text) and text[end] in _TOKEN_CHARS:
            end += 1
        self.pos = end
        return Token(text[start:end])

    def byte_sequence(self) -> bytes:
        text = self.text
        end = text.find(":", self.pos + 1)
        if end < 0:
            raise self.fail("unterminated byte sequence")
        encoded = text[self.pos + 1 : end]
        if not _BASE64.issuperset(encoded):
            raise self.fail("bad character in byte sequence")
        self.pos = end + 1
        try:
            return base64.b64decode(encoded + "=" * (-len(encoded) % 4))
        except binascii.Error:
            raise self.fail("bad base64 in byte sequence") from None

    def boolean(self) -> bool:
        value = self.text[self.pos + 1 : self.pos + 2]
        if value not in ("0", "1"):
            raise self.fail("expected ?0 or ?1")
        self.pos += 2
        return value == "1"
