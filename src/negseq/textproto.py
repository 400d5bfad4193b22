"""A strict reader of protobuf text format, the format of TorchEasyRec's pipeline.config files.

It knows the syntax, not any schema: a file becomes a `Message`, an ordered list of named fields
whose values are strings, numbers, booleans, enum names or nested messages, each with the line
it came from. What a field means is the caller's business (`negseq.import_config`). Anything
the grammar does not allow is a `NegseqError` naming file, line and column; nothing is skipped.
No protobuf dependency: negseq reads these files without TorchEasyRec's generated code.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from negseq.errors import NegseqError


class EnumName(str):
    """An identifier value (`dataset_type: ParquetDataset`), apart from a quoted string."""


Scalar = str | int | float | bool | EnumName


@dataclass
class Field:
    name: str
    value: Scalar | Message
    line: int


@dataclass
class Message:
    fields: list[Field] = field(default_factory=list)
    line: int = 0

    def all(self, name: str) -> list[Field]:
        """Every occurrence of `name`, in file order (a repeated field, or a list `[a, b]`)."""
        return [f for f in self.fields if f.name == name]

    def names(self) -> list[str]:
        """Field names in file order, each once."""
        return list(dict.fromkeys(f.name for f in self.fields))


@dataclass(frozen=True)
class _Token:
    kind: str  # "name", "string", "number", "punct", "end"
    text: str
    line: int
    column: int
    value: object = None


_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r\n\f\v]+)
  | (?P<comment>\#[^\n]*)
  | (?P<number>-?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?[fF]?)(?![A-Za-z_0-9]))
  | (?P<name>-?[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<punct>[{}<>\[\]:,;])
    """,
    re.VERBOSE,
)
_SIMPLE_ESCAPES = {
    "a": b"\a",
    "b": b"\b",
    "f": b"\f",
    "n": b"\n",
    "r": b"\r",
    "t": b"\t",
    "v": b"\v",
    "\\": b"\\",
    "'": b"'",
    '"': b'"',
    "?": b"?",
}
_ESCAPE = re.compile(r"\\(?:([0-7]{1,3})|x([0-9a-fA-F]{1,2})|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8})|(.))", re.S)
_FLOAT_WORDS = {"inf": float("inf"), "-inf": float("-inf"), "infinity": float("inf"), "nan": float("nan")}


class _Lexer:
    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source

    def error(self, line: int, column: int, message: str) -> NegseqError:
        return NegseqError(f"{self.source}:{line}:{column}: {message}")

    def tokens(self) -> Iterator[_Token]:
        pos, line, line_start = 0, 1, 0
        while pos < len(self.text):
            match = _TOKEN.match(self.text, pos)
            column = pos - line_start + 1
            if match is None:
                snippet = self.text[pos : pos + 20].split("\n")[0]
                if snippet[:1] in "\"'":
                    raise self.error(line, column, f"unterminated string {snippet!r}")
                raise self.error(line, column, f"unexpected {snippet!r}")
            kind = match.lastgroup
            text = match.group()
            if kind == "string":
                yield _Token(kind, text, line, column, self._unescape(text, line, column))
            elif kind in ("number", "name", "punct"):
                yield _Token(str(kind), text, line, column)
            newlines = text.count("\n")
            if newlines:
                line += newlines
                line_start = pos + text.rindex("\n") + 1
            pos = match.end()
        yield _Token("end", "", line, pos - line_start + 1)

    def _unescape(self, literal: str, line: int, column: int) -> str:
        """A quoted literal's value: C escapes as protobuf reads them (octal and hex are bytes),
        then the bytes as UTF-8."""
        body = literal[1:-1]
        out = bytearray()
        pos = 0
        for match in _ESCAPE.finditer(body):
            out += body[pos : match.start()].encode()
            octal, hex2, u4, u8, simple = match.groups()
            if octal is not None:
                if int(octal, 8) > 0xFF:
                    raise self.error(line, column, f"octal escape \\{octal} is above \\377 in {literal}")
                out.append(int(octal, 8))
            elif hex2 is not None:
                out.append(int(hex2, 16))
            elif u4 is not None or u8 is not None:
                out += chr(int(u4 or u8, 16)).encode()
            elif simple in _SIMPLE_ESCAPES:
                out += _SIMPLE_ESCAPES[simple]
            else:
                raise self.error(line, column, f"unknown escape \\{simple} in {literal}")
            pos = match.end()
        out += body[pos:].encode()
        try:
            return out.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.error(line, column, f"string {literal} is not UTF-8: {exc}") from None


class _Parser:
    def __init__(self, text: str, source: str) -> None:
        self.lexer = _Lexer(text, source)
        self.tokens = list(self.lexer.tokens())
        self.pos = 0

    @property
    def token(self) -> _Token:
        return self.tokens[self.pos]

    def error(self, token: _Token, message: str) -> NegseqError:
        return self.lexer.error(token.line, token.column, message)

    def take(self) -> _Token:
        token = self.token
        self.pos += 1
        return token

    def at(self, text: str) -> bool:
        return self.token.kind == "punct" and self.token.text == text

    def expect(self, text: str) -> _Token:
        if not self.at(text):
            raise self.error(
                self.token, f"expected {text!r}, got {self.token.text or 'the end of the file'!r}"
            )
        return self.take()

    def message(self, close: str | None, line: int) -> Message:
        message = Message(line=line)
        while not (self.at(close) if close else self.token.kind == "end"):
            if self.token.kind == "end":
                raise self.error(self.token, f"missing {close!r}: the file ends inside a message")
            message.fields.extend(self.field())
            if self.at(",") or self.at(";"):
                self.take()
        if close:
            self.take()
        return message

    def field(self) -> list[Field]:
        name = self.token
        if name.kind != "name" or name.text.startswith("-") or "." in name.text:
            if self.at("["):
                raise self.error(name, "extension and Any fields ([...] names) are not supported")
            raise self.error(name, f"expected a field name, got {name.text or 'the end of the file'!r}")
        self.take()
        colon = self.at(":")
        if colon:
            self.take()
        if self.at("{") or self.at("<"):
            return [Field(name.text, self.nested(), name.line)]
        if not colon:
            raise self.error(self.token, f"expected ':' or '{{' after {name.text!r}, got {self.token.text!r}")
        if self.at("["):
            return [Field(name.text, value, name.line) for value in self.list()]
        return [Field(name.text, self.scalar(), name.line)]

    def nested(self) -> Message:
        opening = self.take()
        return self.message("}" if opening.text == "{" else ">", opening.line)

    def list(self) -> list[Scalar | Message]:
        self.expect("[")
        values: list[Scalar | Message] = []
        while not self.at("]"):
            values.append(self.nested() if self.at("{") or self.at("<") else self.scalar())
            if not self.at("]"):
                self.expect(",")
        self.take()
        return values

    def scalar(self) -> Scalar:
        token = self.take()
        if token.kind == "string":
            parts = [str(token.value)]
            while self.token.kind == "string":  # adjacent literals concatenate
                parts.append(str(self.take().value))
            return "".join(parts)
        if token.kind == "number":
            text = token.text.rstrip("fF") if not token.text.lower().startswith(("0x", "-0x")) else token.text
            if re.fullmatch(r"-?(0[xX][0-9a-fA-F]+|\d+)", text):
                return int(text, 0) if not re.fullmatch(r"-?0\d+", text) else int(text, 8)
            return float(text)
        if token.kind == "name":
            lowered = token.text.lower()
            if token.text in ("true", "True"):
                return True
            if token.text in ("false", "False"):
                return False
            if lowered in _FLOAT_WORDS:
                return _FLOAT_WORDS[lowered]
            if token.text.startswith("-"):
                raise self.error(token, f"expected a value, got {token.text!r}")
            return EnumName(token.text)
        raise self.error(token, f"expected a value, got {token.text or 'the end of the file'!r}")


def parse(text: str, source: str = "<text>") -> Message:
    """Parse protobuf text format into a `Message`; a syntax error names source, line, column."""
    return _Parser(text, source).message(None, 1)


def parse_file(path: str | Path) -> Message:
    path = Path(path)
    if not path.is_file():
        raise NegseqError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise NegseqError(f"{path}: not UTF-8 text: {exc}") from None
    return parse(text, str(path))
