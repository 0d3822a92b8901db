"""A `where` filter from an untrusted client, checked against a small grammar and the table's columns.

LanceDB filters are DataFusion SQL, which has functions and casts that a search page never needs. A
filter from the network must be only a filter: comparisons of a column with literals, joined by AND,
OR and NOT. It is parsed here and re-written from its tokens, so what reaches the engine is exactly
what the grammar allows:

    filter     := or
    or         := and ("OR" and)*
    and        := not ("AND" not)*
    not        := "NOT" not | "(" or ")" | comparison
    comparison := column op literal | column "IS" ["NOT"] "NULL"
                | column ["NOT"] "IN" "(" literal ("," literal)* ")"
                | column ["NOT"] "LIKE" string | column ["NOT"] "BETWEEN" literal "AND" literal
    literal    := number | string | TRUE | FALSE | TIMESTAMP string
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from mmindex.errors import ConfigError

MAX_FILTER_LENGTH = 2000
MAX_IN_ITEMS = 1000
MAX_DEPTH = 32
OPERATORS = ("<=", ">=", "<>", "!=", "=", "<", ">")
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>'(?:[^']|'')*')
      | (?P<number>-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)
      | (?P<op><=|>=|<>|!=|=|<|>)
      | (?P<punct>[(),])
      | (?P<word>[A-Za-z_][A-Za-z0-9_]*)
    )""",
    re.VERBOSE,
)
KEYWORDS = {"AND", "OR", "NOT", "IS", "NULL", "IN", "LIKE", "BETWEEN", "TRUE", "FALSE", "TIMESTAMP"}


@dataclass(frozen=True)
class Token:
    kind: str  # string | number | op | punct | word
    text: str


def check_filter(where: str, columns: Collection[str]) -> str:
    """The filter re-written from its tokens, or ConfigError naming what is not allowed."""
    if len(where) > MAX_FILTER_LENGTH:
        raise ConfigError(f"the filter is longer than {MAX_FILTER_LENGTH} characters")
    parser = _Parser(_tokens(where), {column.lower(): column for column in columns})
    out = parser.parse()
    return " ".join(out)


def _tokens(text: str) -> list[Token]:
    tokens, position = [], 0
    while position < len(text):
        if text[position:].strip() == "":
            break
        match = _TOKEN.match(text, position)
        if not match or match.end() == position:
            position += len(text[position:]) - len(text[position:].lstrip())  # point at the character
            raise ConfigError(
                f"the filter has a character it may not use at position {position}: {text[position]!r}"
            )
        kind = match.lastgroup or ""
        tokens.append(Token(kind, match.group(kind)))
        position = match.end()
    return tokens


class _Parser:
    def __init__(self, tokens: list[Token], columns: dict[str, str]) -> None:
        self.tokens = tokens
        self.columns = columns
        self.position = 0
        self.out: list[str] = []
        self.depth = 0

    def parse(self) -> list[str]:
        if not self.tokens:
            raise ConfigError("the filter is empty")
        self._or()
        if self.position != len(self.tokens):
            raise ConfigError(f"the filter has something unexpected at {self._peek_text()!r}")
        return self.out

    # -- grammar ---------------------------------------------------------------------------------

    def _or(self) -> None:
        self._and()
        while self._keyword("OR"):
            self.out.append("OR")
            self._and()

    def _and(self) -> None:
        self._not()
        while self._keyword("AND"):
            self.out.append("AND")
            self._not()

    def _not(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ConfigError("the filter is nested too deeply")
        if self._keyword("NOT"):
            self.out.append("NOT")
            self._not()
        elif self._punct("("):
            self.out.append("(")
            self._or()
            self._expect_punct(")")
            self.out.append(")")
        else:
            self._comparison()
        self.depth -= 1

    def _comparison(self) -> None:
        self.out.append(self._column())
        token = self._next("a comparison")
        if token.kind == "op":
            self.out.append(token.text)
            self._literal()
            return
        word = token.text.upper() if token.kind == "word" else ""
        if word == "IS":
            self.out.append("IS")
            if self._keyword("NOT"):
                self.out.append("NOT")
            if not self._keyword("NULL"):
                raise ConfigError("IS must be followed by NULL or NOT NULL")
            self.out.append("NULL")
            return
        if word == "NOT":
            self.out.append("NOT")
            token = self._next("IN, LIKE or BETWEEN after NOT")
            word = token.text.upper() if token.kind == "word" else ""
        if word == "IN":
            self.out.append("IN")
            self._expect_punct("(")
            self.out.append("(")
            self._literal()
            for _ in range(MAX_IN_ITEMS):
                if not self._punct(","):
                    break
                self.out.append(",")
                self._literal()
            self._expect_punct(")")
            self.out.append(")")
        elif word == "LIKE":
            self.out.append("LIKE")
            self._literal(strings_only=True)
        elif word == "BETWEEN":
            self.out.append("BETWEEN")
            self._literal()
            if not self._keyword("AND"):
                raise ConfigError("BETWEEN needs AND between its two bounds")
            self.out.append("AND")
            self._literal()
        else:
            raise ConfigError(f"expected a comparison after a column, got {token.text!r}")

    def _column(self) -> str:
        token = self._next("a column name")
        if token.kind != "word" or token.text.upper() in KEYWORDS:
            raise ConfigError(f"expected a column name, got {token.text!r}")
        column = self.columns.get(token.text.lower())
        if column is None:
            known = ", ".join(sorted(self.columns.values()))
            raise ConfigError(f"the filter names no column {token.text!r}; columns: {known}")
        if self._peek_text() == "(":
            raise ConfigError("the filter may not call functions")
        return column

    def _literal(self, *, strings_only: bool = False) -> None:
        token = self._next("a value")
        if token.kind == "string":
            self.out.append(token.text)
            return
        if not strings_only:
            if token.kind == "number":
                self.out.append(token.text)
                return
            if token.kind == "word" and token.text.upper() in ("TRUE", "FALSE"):
                self.out.append(token.text.upper())
                return
            if token.kind == "word" and token.text.upper() == "TIMESTAMP":
                moment = self._next("a timestamp string")
                if moment.kind != "string":
                    raise ConfigError("TIMESTAMP must be followed by a quoted time")
                self.out += ["TIMESTAMP", moment.text]
                return
        raise ConfigError(f"expected a {'quoted string' if strings_only else 'value'}, got {token.text!r}")

    # -- tokens ----------------------------------------------------------------------------------

    def _next(self, wanted: str) -> Token:
        if self.position >= len(self.tokens):
            raise ConfigError(f"the filter ends where it needs {wanted}")
        token = self.tokens[self.position]
        self.position += 1
        return token

    def _peek_text(self) -> str:
        return self.tokens[self.position].text if self.position < len(self.tokens) else ""

    def _keyword(self, word: str) -> bool:
        if self.position < len(self.tokens):
            token = self.tokens[self.position]
            if token.kind == "word" and token.text.upper() == word:
                self.position += 1
                return True
        return False

    def _punct(self, text: str) -> bool:
        if self.position < len(self.tokens) and self.tokens[self.position].text == text:
            if self.tokens[self.position].kind == "punct":
                self.position += 1
                return True
        return False

    def _expect_punct(self, text: str) -> None:
        if not self._punct(text):
            raise ConfigError(f"the filter needs {text!r} at {self._peek_text() or 'its end'!r}")
