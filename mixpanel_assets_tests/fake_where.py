"""Mixpanel's segmentation expressions (the `where` of the Export and Engage APIs) for the fake.

Why it exists: a `where` that Mixpanel accepts must be accepted by the fake, and select the same
events, or a test passes against the fake and the pipeline fails against Mixpanel (or the other
way round). The grammar and the typing rules follow Mixpanel's reference page "Segmentation
Expressions" (https://docs.mixpanel.com/reference/segmentation-expressions, the page
MIXPANEL_SPEC.md section 4 points to), its help article "How do I build segmentation expressions"
(`"Facebook" in properties[...]`, `not defined (...)`) and section 4's `datetime(...)` forms:

    expression := or ; or := and ("or" and)* ; and := not ("and" not)* ; not := "not" not | compare
    compare    := sum (("==" | "!=" | ">" | ">=" | "<" | "<=" | "in") sum)*
    sum        := product (("+" | "-") product)* ; product := unary (("*" | "/" | "%") unary)*
    unary      := "-" unary | primary
    primary    := properties["name"] | event["name"] | user["name"] | literal | "[" list "]"
                | ("floor" | "round" | "ceil" | "boolean" | "number" | "string" | "datetime"
                   | "defined") "(" expression ")" | "(" expression ")"

Keywords (and, or, not, in, true, false) are accepted in any case. Values are Python values plus
UNDEFINED (a missing property) and DateTime; `properties["$time"]` is the event's time as a
DateTime. Operators follow the page's rules: `==` between different types is false, ordering
and arithmetic on the wrong types give undefined, `and`/`or` take booleans or undefined (other
types are an error, as the page says), `not undefined` is true. The selection keeps a record
when the result cast to boolean is true. No eval anywhere: the parser builds closures.
`user["x"]` reads the record's own properties: a profile's for Engage, the event's for Export
(Mixpanel would read the event's user profile there; no test needs that join yet).

Over 400 lines on purpose: the grammar, the per-operator typing rules and the parser are one unit
that follows one documentation page; split, each part would be unreadable without the others.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable


class WhereError(ValueError):
    """The `where` expression is malformed, or misuses a type (answered with 400)."""


class _Undefined:
    """A property the record does not have; falsy, equal to nothing but itself."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "undefined"


UNDEFINED = _Undefined()


class DateTime(float):
    """A datetime value: epoch seconds (UTC) with a type of its own, so it never equals a number."""

    def __repr__(self) -> str:
        return f"datetime({float(self)!r})"

    def iso(self) -> str:
        return dt.datetime.fromtimestamp(float(self), dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


Record = tuple[dict, "float | None"]  # (properties, event time in seconds; None for a profile)
Node = Callable[[Record], object]

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<num>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)
    | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<op>==|!=|<=|>=|<|>|\+|-|\*|/|%|\(|\)|\[|\]|,)
    | (?P<name>[A-Za-z_$][A-Za-z_0-9]*)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in", "true", "false"}
_REFS = ("properties", "event", "user")
_FUNCTIONS = ("floor", "round", "ceil", "boolean", "number", "string", "datetime", "defined")
_DECIMAL = re.compile(r"\s*[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?\s*")


def parse_where(text: str) -> Node:
    """Compile a segmentation expression to a function of (properties, time); see the module doc."""
    parser = _Parser(text)
    node = parser.expression()
    if parser.pos != len(parser.tokens):
        raise parser.error(f"unexpected {parser.tokens[parser.pos][1]!r}")
    return node


def selects(node: Node, record: Record) -> bool:
    """Whether a record passes the `where`: its value cast to boolean is true."""
    return to_boolean(node(record)) is True


def type_of(value: object) -> str:
    if value is UNDEFINED:
        return "undefined"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, DateTime):
        return "datetime"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    return "object"


# --- casts (the page's "Casting to String/Number" tables; boolean per the Data Types page) ----------


def to_string(value: object) -> object:
    kind = type_of(value)
    if kind in ("string", "null", "undefined"):
        return value
    if kind == "boolean":
        return "true" if value else "false"
    if kind == "datetime":
        return value.iso()
    if kind == "number":
        if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
            return str(int(value))
        return repr(value) if isinstance(value, float) else str(value)
    return UNDEFINED


def to_number(value: object) -> object:
    kind = type_of(value)
    if kind == "number":
        return value
    if kind == "boolean":
        return 1.0 if value else 0.0
    if kind == "datetime":
        return float(value)
    if kind == "string" and _DECIMAL.fullmatch(value):
        return float(value)
    return UNDEFINED


def to_boolean(value: object) -> bool:
    """"false", 0, null, undefined and the empty string are false; any other set value is true."""
    kind = type_of(value)
    if kind == "boolean":
        return value
    if kind in ("null", "undefined"):
        return False
    if kind == "number":
        return value != 0
    if kind == "string":
        return value not in ("", "false")
    if kind in ("list", "object"):
        return len(value) > 0
    return True


def to_datetime(value: object) -> object:
    kind = type_of(value)
    if kind == "datetime":
        return value
    if kind == "number":
        return DateTime(value)
    if kind == "string":
        try:
            moment = dt.datetime.fromisoformat(value)
        except ValueError:
            return UNDEFINED
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        return DateTime(moment.timestamp())
    return UNDEFINED


# --- operators ---------------------------------------------------------------------------------------


def _equal(a: object, b: object) -> bool:
    kind = type_of(a)
    if kind != type_of(b):
        return False
    if kind == "list":
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def _order(op: str, a: object, b: object) -> object:
    kind = type_of(a)
    if kind != type_of(b) or kind not in ("number", "string", "datetime"):
        return UNDEFINED
    return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]


def _contains(a: object, b: object) -> object:
    """`a in b`: substring of a string, or member of a list; undefined otherwise."""
    if type_of(b) == "list" and a is not UNDEFINED:
        return any(_equal(a, item) for item in b)
    if type_of(a) == "string" and type_of(b) == "string":
        return a in b
    return UNDEFINED


def _arithmetic(op: str, a: object, b: object) -> object:
    ka, kb = type_of(a), type_of(b)
    if op == "+" and ka == kb == "string":
        return a + b
    if not ka == kb == "number":
        return UNDEFINED
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0:
        return UNDEFINED  # the page: division by 0 is undefined (and so, here, is remainder by 0)
    if op == "/":
        return a / b
    result = math.fmod(a, b)  # the remainder takes the dividend's sign
    return int(result) if isinstance(a, int) and isinstance(b, int) else result


def _round(x: float) -> int:
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


_MATH = {"floor": math.floor, "ceil": math.ceil, "round": _round}
_CASTS = {"boolean": to_boolean, "number": to_number, "string": to_string, "datetime": to_datetime}


def _logical_operand(op: str, value: object, text: str) -> bool:
    kind = type_of(value)
    if kind == "boolean":
        return value
    if kind in ("undefined", "null"):
        return False
    raise WhereError(f"'{op}' takes boolean operands, got {kind} {value!r} in where expression {text!r}")


# --- parser ------------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens = self._tokenize(text)
        self.pos = 0

    def error(self, message: str) -> WhereError:
        at = self.tokens[self.pos][2] if self.pos < len(self.tokens) else len(self.text.rstrip())
        return WhereError(f"invalid where expression {self.text!r}: {message} at position {at}")

    def _tokenize(self, text: str) -> list[tuple[str, object, int]]:
        tokens: list[tuple[str, object, int]] = []
        pos, end = 0, len(text.rstrip())
        while pos < end:
            match = _TOKEN.match(text, pos)
            if not match or match.end() == pos:
                pos = len(text) - len(text[pos:].lstrip())
                raise WhereError(f"invalid where expression {text!r}: cannot read {text[pos:pos + 12]!r} "
                                 f"at position {pos}")
            kind = match.lastgroup
            value = match.group(kind)
            start = match.start(kind)
            pos = match.end()
            if kind == "num":
                tokens.append(("lit", float(value) if any(c in value for c in ".eE") else int(value), start))
            elif kind == "str":
                tokens.append(("lit", _unquote(value), start))
            elif kind == "op":
                tokens.append(("op", value, start))
            elif value.lower() in _KEYWORDS:
                tokens.append(("kw", value.lower(), start))
            else:
                tokens.append(("name", value, start))
        return tokens

    def peek(self) -> tuple[str, object] | None:
        return self.tokens[self.pos][:2] if self.pos < len(self.tokens) else None

    def accept(self, kind: str, value: object) -> bool:
        if self.peek() == (kind, value):
            self.pos += 1
            return True
        return False

    def expect(self, kind: str, value: object = None) -> object:
        token = self.peek()
        if token is None or token[0] != kind or (value is not None and token[1] != value):
            found = "the end" if token is None else repr(token[1])
            raise self.error(f"expected {value or kind!r} but found {found}")
        self.pos += 1
        return token[1]

    def expression(self) -> Node:
        node = self.conjunction()
        while self.accept("kw", "or"):
            left, right = node, self.conjunction()
            node = lambda r, a=left, b=right, t=self.text: (
                _logical_operand("or", a(r), t) or _logical_operand("or", b(r), t))
        return node

    def conjunction(self) -> Node:
        node = self.negation()
        while self.accept("kw", "and"):
            left, right = node, self.negation()
            node = lambda r, a=left, b=right, t=self.text: (
                _logical_operand("and", a(r), t) and _logical_operand("and", b(r), t))
        return node

    def negation(self) -> Node:
        if self.accept("kw", "not"):
            inner = self.negation()
            return lambda r: _not(inner(r))
        return self.comparison()

    def comparison(self) -> Node:
        node = self.sum()
        while True:
            token = self.peek()
            if token in (("op", "=="), ("op", "!=")):
                self.pos += 1
                left, right, negate = node, self.sum(), token[1] == "!="
                node = lambda r, a=left, b=right, n=negate: _equal(a(r), b(r)) != n
            elif token is not None and token[0] == "op" and token[1] in ("<", "<=", ">", ">="):
                self.pos += 1
                left, right = node, self.sum()
                node = lambda r, a=left, b=right, op=token[1]: _order(op, a(r), b(r))
            elif token == ("kw", "in"):
                self.pos += 1
                left, right = node, self.sum()
                node = lambda r, a=left, b=right: _contains(a(r), b(r))
            else:
                return node

    def sum(self) -> Node:
        node = self.product()
        while (token := self.peek()) in (("op", "+"), ("op", "-")):
            self.pos += 1
            left, right = node, self.product()
            node = lambda r, a=left, b=right, op=token[1]: _arithmetic(op, a(r), b(r))
        return node

    def product(self) -> Node:
        node = self.unary()
        while (token := self.peek()) in (("op", "*"), ("op", "/"), ("op", "%")):
            self.pos += 1
            left, right = node, self.unary()
            node = lambda r, a=left, b=right, op=token[1]: _arithmetic(op, a(r), b(r))
        return node

    def unary(self) -> Node:
        if self.accept("op", "-"):
            inner = self.unary()
            return lambda r: _negate(inner(r))
        return self.primary()

    def primary(self) -> Node:
        token = self.peek()
        if token is None:
            raise self.error("the expression ends too early")
        kind, value = token
        if kind == "lit":
            self.pos += 1
            return lambda r: value
        if kind == "kw" and value in ("true", "false"):
            self.pos += 1
            return lambda r, v=value == "true": v
        if token == ("op", "("):
            self.pos += 1
            node = self.expression()
            self.expect("op", ")")
            return node
        if token == ("op", "["):
            return self.list_literal()
        if kind == "name" and value in _REFS:
            return self.reference()
        if kind == "name" and value in _FUNCTIONS:
            return self.call(value)
        raise self.error(f"unsupported {value!r}")

    def list_literal(self) -> Node:
        self.expect("op", "[")
        items: list[Node] = []
        if not self.accept("op", "]"):
            items.append(self.expression())
            while self.accept("op", ","):
                items.append(self.expression())
            self.expect("op", "]")
        return lambda r: [item(r) for item in items]

    def reference(self) -> Node:
        self.expect("name")
        self.expect("op", "[")
        token = self.peek()
        name = self.expect("lit")
        if not isinstance(name, str):
            self.pos -= 1
            raise self.error(f"property names are strings in quotes, not {token[1]!r}")
        self.expect("op", "]")
        if name == "$time":
            return lambda r: DateTime(r[1]) if r[1] is not None else r[0].get(name, UNDEFINED)
        return lambda r: r[0].get(name, UNDEFINED)

    def call(self, function: str) -> Node:
        self.pos += 1
        self.expect("op", "(")
        start = self.pos
        inner = self.expression()
        self.expect("op", ")")
        if function == "defined":
            return lambda r: inner(r) is not UNDEFINED
        if function in _MATH:
            operation = _MATH[function]
            return lambda r: operation(v) if type_of(v := inner(r)) == "number" and math.isfinite(v) else UNDEFINED
        cast = _CASTS[function]
        if function == "datetime" and self.pos - start == 2 and self.tokens[start][0] == "lit":
            constant = cast(self.tokens[start][1])  # a literal that is no date is a mistake in the query
            if constant is UNDEFINED:
                self.pos = start
                raise self.error(f"datetime({self.tokens[start][1]!r}) is not epoch seconds or YYYY-MM-DDTHH:MM:SS")
            return lambda r: constant
        return lambda r: cast(inner(r))


def _not(value: object) -> object:
    kind = type_of(value)
    if kind == "boolean":
        return not value
    if kind in ("undefined", "null"):
        return True
    return UNDEFINED


def _negate(value: object) -> object:
    if type_of(value) == "number":
        return -value
    return UNDEFINED


def _unquote(token: str) -> str:
    inner = token[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), inner)
