"""Rule types of the config schema (:mod:`frcnn.config.schema`): each check raises ConfigError naming
the key, what it holds and what is allowed; and the "unknown key; did you mean ..." message."""

from __future__ import annotations

import difflib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from frcnn.errors import ConfigError


def _type_name(value: Any) -> str:
    return type(value).__name__


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


class Rule(ABC):
    """One value's check; ``check`` raises ConfigError naming ``key``."""

    nullable: bool = False

    @abstractmethod
    def check(self, value: Any, key: str) -> None:
        """Raise ConfigError naming ``key`` when ``value`` breaks the rule."""

    @abstractmethod
    def describe(self) -> str:
        """The allowed values, for error messages and ``--help``."""


@dataclass
class Number(Rule):
    """int or float (``integer=True``: int only; bools are never numbers) within bounds."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: value must be > low (else >= low)
    high_open: bool = False
    integer: bool = False
    nullable: bool = False
    also: tuple[Any, ...] = ()  # extra allowed values, e.g. -1 for "no limit"

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        bounds = self._bounds()
        return f"{kind}{' ' + bounds if bounds else ''}" + (" or null" if self.nullable else "")

    def _bounds(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return ""

    def check(self, value: Any, key: str) -> None:
        if value is None and self.nullable:
            return
        if value in self.also and not isinstance(value, bool):
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected {self.describe()}, got {_show(value)} ({_type_name(value)})")
        if self.integer and not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r} ({_type_name(value)})")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value}")
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if too_low or too_high:
            extra = f" (or {', '.join(map(str, self.also))})" if self.also else ""
            raise ConfigError(f"{key}={value} is out of range: must be {self._bounds()}{extra}")


@dataclass
class Bool(Rule):
    def describe(self) -> str:
        return "true or false"

    def check(self, value: Any, key: str) -> None:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_show(value)} ({_type_name(value)})")


@dataclass
class Text(Rule):
    nullable: bool = False

    def describe(self) -> str:
        return "a string" + (" or null" if self.nullable else "")

    def check(self, value: Any, key: str) -> None:
        if value is None and self.nullable:
            return
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected {self.describe()}, got {_show(value)} ({_type_name(value)})")


@dataclass
class Choice(Rule):
    """One of a fixed set; ``choices`` may be a callable read at check time (a code registry)."""

    choices: Sequence[Any] | Callable[[], Iterable[Any]]
    hint: str = ""  # e.g. "choose with backbone=<name>"

    def allowed(self) -> list[Any]:
        return list(self.choices() if callable(self.choices) else self.choices)

    def describe(self) -> str:
        return "one of " + ", ".join(map(str, self.allowed()))

    def check(self, value: Any, key: str) -> None:
        allowed = self.allowed()
        if isinstance(value, bool) or value not in allowed:
            near = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            suggestion = f"; did you mean {near[0]!r}?" if near else ""
            hint = f" ({self.hint})" if self.hint else ""
            raise ConfigError(f"{key}={_show(value)} is not allowed; allowed: "
                              f"{', '.join(map(str, allowed))}{suggestion}{hint}")


def is_list(value: Any) -> bool:
    """A config list: a sequence that is not a string, bytes or a mapping."""
    return isinstance(value, Sequence) and not isinstance(value, (str, bytes, Mapping))


@dataclass
class ListOf(Rule):
    item: Rule
    min_len: int = 0
    length: int | None = None
    nullable: bool = False

    def describe(self) -> str:
        size = f" of exactly {self.length}" if self.length is not None else (
            f" of at least {self.min_len}" if self.min_len else "")
        return f"a list{size} ({self.item.describe()} each)" + (" or null" if self.nullable else "")

    def check(self, value: Any, key: str) -> None:
        if value is None and self.nullable:
            return
        if not is_list(value):
            raise ConfigError(f"{key}: expected {self.describe()}, got {_show(value)} ({_type_name(value)})")
        if self.length is not None and len(value) != self.length:
            raise ConfigError(f"{key} must hold exactly {self.length} values, got {list(value)!r}")
        if len(value) < self.min_len:
            raise ConfigError(f"{key} must hold at least {self.min_len} value(s), got {list(value)!r}")
        for i, item in enumerate(value):
            self.item.check(item, f"{key}[{i}]")


@dataclass
class AnyOf(Rule):
    """The first alternative that accepts the value wins (e.g. devices: int | 'auto' | list)."""

    options: Sequence[Rule]

    def describe(self) -> str:
        return " or ".join(o.describe() for o in self.options)

    def check(self, value: Any, key: str) -> None:
        for option in self.options:
            try:
                option.check(value, key)
                return
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {self.describe()}, got {_show(value)} ({_type_name(value)})")


@dataclass
class OrAuto(Rule):
    """``auto`` (a value the run derives from its training set at start-up) or what ``rule`` allows."""

    rule: Rule

    def describe(self) -> str:
        return f"{self.rule.describe()} or auto"

    def check(self, value: Any, key: str) -> None:
        if value != "auto":
            self.rule.check(value, key)


@dataclass
class OrNull(Rule):
    """null (the feature is off) or what ``rule`` allows."""

    rule: Rule

    def describe(self) -> str:
        return f"{self.rule.describe()} or null"

    def check(self, value: Any, key: str) -> None:
        if value is not None:
            self.rule.check(value, key)


@dataclass
class Free(Rule):
    """Anything (documentation-only keys such as a preset's paper numbers)."""

    def describe(self) -> str:
        return "any value"

    def check(self, value: Any, key: str) -> None:
        return


@dataclass
class Node(Rule):
    """A mapping with known keys. ``open``: other keys are allowed and left to the code that
    reads them (the dataset builder for ``data``). ``optional``: keys that may be absent."""

    fields: Mapping[str, Rule]
    optional: frozenset[str] = field(default_factory=frozenset)
    open: bool = False
    nullable: bool = False

    def describe(self) -> str:
        return "a mapping with keys " + ", ".join(self.fields)

    def check(self, value: Any, key: str) -> None:
        if value is None and self.nullable:
            return
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected {self.describe()}, got {_show(value)} ({_type_name(value)})")
        prefix = f"{key}." if key else ""
        if not self.open:
            for name in value:
                if name not in self.fields:
                    raise ConfigError(unknown_key_message(f"{prefix}{name}", list(self.fields), prefix))
        for name, rule in self.fields.items():
            if name not in value:
                if name in self.optional:
                    continue
                raise ConfigError(f"{prefix}{name}: missing; expected {rule.describe()} "
                                  f"(the config group file or an experiment preset must set it)")
            rule.check(value[name], f"{prefix}{name}")


@dataclass
class Variant(Rule):
    """A mapping whose schema depends on its ``name`` (logger=wandb|csv|..., recipe=...)."""

    variants: Mapping[str, Node]
    group: str  # the config group that picks the variant, for the message

    def describe(self) -> str:
        return f"a {self.group} config (name: {', '.join(self.variants)})"

    def check(self, value: Any, key: str) -> None:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected {self.describe()}, got {_show(value)}")
        Choice(list(self.variants), hint=f"choose with {self.group}=<name>").check(value.get("name"), f"{key}.name")
        self.variants[value["name"]].check(value, key)


RENAMED_KEYS = {  # old key -> what to write now
    "roi_head.batch_size": "roi_head.rois_per_minibatch, the RoIs of a whole mini-batch (not per image): "
                           "128 per image at images_per_batch=2 is roi_head.rois_per_minibatch=256",
}


def unknown_key_message(full_key: str, known: Sequence[str], prefix: str = "") -> str:
    """'rpn.lamda: unknown key; did you mean rpn.lambda?' with the keys that do exist
    ('... renamed to ...' for a key of an earlier version)."""
    if full_key in RENAMED_KEYS:
        return f"{full_key}: renamed to {RENAMED_KEYS[full_key]}"
    name = full_key[len(prefix):]
    near = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    guess = f"; did you mean {prefix}{near[0]}?" if near else ""
    where = prefix.rstrip(".") or "the top level"
    return f"{full_key}: unknown key{guess} (keys of {where}: {', '.join(sorted(known))})"
