"""Settings from the environment, framework-free: the one parser of variables for the whole project.

Used by `config/settings.py` and by the core's own settings (`agent/config.py`, `agent/vector_config.py`).
An unset or blank variable means "use the default"; a bad value raises `ImproperlyConfigured` naming the
variable, the value and what is allowed, so a bad deployment stops at start-up, not at the first job.
"""

from __future__ import annotations

import builtins
import math
import os
from collections.abc import Mapping

from core.errors import ImproperlyConfigured

TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"0", "false", "no", "off"})
BOOL_EXPECTED = "true or false (also 1/0, yes/no, on/off)"


def env_error(variable: str, value: object, expected: str) -> ImproperlyConfigured:
    """An `ImproperlyConfigured` that names the variable, the bad value and what is allowed."""
    return ImproperlyConfigured(f"{variable}={value!r} is invalid: expected {expected}.")


def parse_int(name: str, raw: str, *, minimum: int | None = None) -> int:
    """`raw` as an integer (>= `minimum` when given). Raises `ImproperlyConfigured` naming `name`."""
    try:
        value = int(raw)
    except ValueError:
        raise env_error(name, raw, "an integer") from None
    if minimum is not None and value < minimum:
        raise env_error(name, raw, f"an integer >= {minimum}")
    return value


def parse_float(name: str, raw: str, *, minimum: float | None = None) -> float:
    """`raw` as a finite-or-not number (>= `minimum` when given). Raises `ImproperlyConfigured`."""
    try:
        value = float(raw)
    except ValueError:
        raise env_error(name, raw, "a number") from None
    if minimum is not None and not value >= minimum:
        raise env_error(name, raw, f"a number >= {minimum:g}")
    return value


def parse_bool(name: str, raw: str) -> bool:
    """1/true/yes/on or 0/false/no/off, any case. Raises `ImproperlyConfigured` naming `name`."""
    value = raw.strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise env_error(name, raw, BOOL_EXPECTED)


def check_number(
    name: str, value: object, *, minimum: float, inclusive: bool, maximum: float | None = None
) -> None:
    """For values set in code (dataclass fields): a finite number above (or at) `minimum`, and at most
    `maximum` when one is given."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value >= minimum if inclusive else value > minimum) and (maximum is None or value <= maximum)
    if not ok:
        if maximum is not None:
            bounds = f"from {minimum:g} to" if inclusive else f"above {minimum:g} and at most"
            raise env_error(name, value, f"a number {bounds} {maximum:g}")
        bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
        raise env_error(name, value, f"a finite number {bound}")


def check_int(name: str, value: object, *, minimum: int) -> None:
    """For values set in code (dataclass fields): an integer (not a bool) >= `minimum`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise env_error(name, value, f"an integer >= {minimum}")


class Env:
    """Typed reads of one environment mapping (`os.environ` by default; tests pass a dict)."""

    def __init__(self, environ: Mapping[str, str] | None = None):
        self._environ = os.environ if environ is None else environ

    def raw(self, name: str) -> str:
        """The variable's value, stripped; "" when unset."""
        return (self._environ.get(name) or "").strip()

    def str(self, name: str, default: builtins.str = "") -> builtins.str:
        return self.raw(name) or default

    def int(self, name: str, default: builtins.int, *, minimum: builtins.int | None = None) -> builtins.int:
        raw = self.raw(name)
        return parse_int(name, raw, minimum=minimum) if raw else default

    def optional_int(self, name: str, *, minimum: builtins.int | None = None) -> builtins.int | None:
        """An integer, or None when the variable is empty (e.g. "unlimited")."""
        raw = self.raw(name)
        return parse_int(name, raw, minimum=minimum) if raw else None

    def optional_float(self, name: str, *, minimum: builtins.float | None = None) -> builtins.float | None:
        """A number, or None when the variable is empty (e.g. "the provider's default")."""
        raw = self.raw(name)
        return parse_float(name, raw, minimum=minimum) if raw else None

    def float(
        self, name: str, default: builtins.float, *, minimum: builtins.float | None = None
    ) -> builtins.float:
        raw = self.raw(name)
        return parse_float(name, raw, minimum=minimum) if raw else default

    def bool(self, name: str, default: builtins.bool) -> builtins.bool:
        raw = self.raw(name)
        return parse_bool(name, raw) if raw else default

    def list(
        self, name: str, default: builtins.list[builtins.str] | None = None
    ) -> builtins.list[builtins.str]:
        """Comma-separated values, each stripped, blanks dropped."""
        raw = self.raw(name)
        if not raw:
            return builtins.list(default or [])
        return [item.strip() for item in raw.split(",") if item.strip()]

    def choice(self, name: str, default: builtins.str, choices: tuple[builtins.str, ...]) -> builtins.str:
        value = self.str(name, default)
        if value not in choices:
            raise env_error(name, value, " or ".join(choices))
        return value
