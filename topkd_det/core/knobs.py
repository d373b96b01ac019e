"""Validation of loss options against a schema: each knob has a kind (number, integer, boolean, choice)
and a range, and a bad value is reported under the name the user wrote it with.

The API names a knob by its lower-case dotted path (``topkd.temperature``); the trainers pass a
config prefix so that the same check names ``DISTILL.TOPKD.TEMPERATURE`` or
``MODEL.DISTILL.TOPKD.TEMPERATURE``.
"""
import math
import numbers
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple

Path = Tuple[str, ...]


class LossOptionError(ValueError):
    """A loss option with a bad type or value; ``path`` is the option's lower-case path."""

    def __init__(self, message: str, path: Path):
        super().__init__(message)
        self.path = path


def option_namer(config_prefix: Optional[str] = None) -> Callable[[Path], str]:
    """``('topkd', 'k')`` -> ``topkd.k`` (API), ``<PREFIX>.TOPKD.K`` (a yacs node mounted at an upper-case
    PREFIX) or ``<prefix>.topkd.k`` (a lower-case LazyConfig path)."""
    if config_prefix is None:
        return lambda path: ".".join(path)
    upper = config_prefix.isupper()
    return lambda path: ".".join([config_prefix, *(p.upper() if upper else p for p in path)])


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, bool):
        return f"the boolean {value}"
    return f"{value!r} ({type(value).__name__})"


class Knob:
    """One option's rule. ``check`` returns an error text ("must be ..., got ...") or None."""

    def check(self, value: Any) -> Optional[str]:
        raise NotImplementedError


class Number(Knob):
    """A finite real number (int or float, never a bool or a string) with a lower bound."""

    def __init__(self, minimum: float = 0.0, strict: bool = False, integer: bool = False,
                 also: Sequence[Any] = ()):
        self.minimum, self.strict, self.integer, self.also = minimum, strict, integer, tuple(also)

    def _range(self) -> str:
        return f"{'>' if self.strict else '>='} {self.minimum:g}"

    def check(self, value: Any) -> Optional[str]:
        kind = numbers.Integral if self.integer else numbers.Real
        noun = "an integer" if self.integer else "a number"
        if isinstance(value, bool) or not isinstance(value, kind):
            hint = " (write it without quotes)" if isinstance(value, str) else ""
            return f"must be {noun} {self._range()}, got {_describe(value)}{hint}"
        if value in self.also:
            return None
        if not math.isfinite(value):
            return f"must be a finite number {self._range()}, got {value}"
        if value < self.minimum or (self.strict and value == self.minimum):
            allowed = "".join(f" or {a}" for a in self.also)
            return f"must be {self._range()}{allowed}, got {value}"
        return None


def positive() -> Number:
    """Temperatures, TTM's exponent l: anything > 0."""
    return Number(0.0, strict=True)


def non_negative() -> Number:
    """Weights, gains, warmup: 0 turns the term or effect off."""
    return Number(0.0)


def count(minimum: int = 1, also: Sequence[int] = ()) -> Number:
    return Number(minimum, integer=True, also=also)


class Boolean(Knob):
    def check(self, value: Any) -> Optional[str]:
        if not isinstance(value, bool):
            return f"must be True or False, got {_describe(value)}"
        return None


class Choice(Knob):
    def __init__(self, valid: Sequence[str]):
        self.valid = tuple(valid)

    def check(self, value: Any) -> Optional[str]:
        if value not in self.valid:
            return f"must be one of {', '.join(self.valid)}; got {_describe(value)}"
        return None


def validate(options: Mapping[str, Any], schema: Mapping[str, Any], name: Callable[[Path], str],
             path: Path = ()) -> None:
    """Check every option of ``options`` against ``schema`` (same tree shape); the first bad one raises."""
    for key, rule in schema.items():
        where = path + (key,)
        if isinstance(rule, Mapping):
            validate(options[key], rule, name, where)
            continue
        problem = rule.check(options[key])
        if problem:
            raise LossOptionError(f"{name(where)} {problem}", where)


def missing_rules(defaults: Mapping[str, Any], schema: Mapping[str, Any], path: Path = ()) -> list:
    """Options in ``defaults`` that ``schema`` has no rule for (a new knob must get one)."""
    out = []
    for key, value in defaults.items():
        if key not in schema:
            out.append(".".join(path + (key,)))
        elif isinstance(value, Mapping):
            out += missing_rules(value, schema[key], path + (key,))
    return out
