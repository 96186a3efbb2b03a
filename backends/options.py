"""Reading a driver's string options (one INI section of the service configuration)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from backends.errors import SetupError


class Options:
    """Typed access to ``key = value`` options; every problem is a SetupError naming the key."""

    def __init__(self, section: str, values: Mapping[str, str]) -> None:
        self._section = section
        self._values = dict(values)

    def refuse_unknown(self, known: Iterable[str]) -> None:
        unknown = sorted(set(self._values) - set(known))
        if unknown:
            raise SetupError(f"[{self._section}]: unknown option(s): {', '.join(unknown)}")

    def text(self, key: str, default: str | None = None) -> str:
        value = self._values.get(key, default)
        if value is None or not value.strip():
            raise SetupError(f"[{self._section}]: option {key!r} is required")
        return value.strip()

    def number(self, key: str, default: float) -> float:
        raw = self._values.get(key)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise SetupError(f"[{self._section}]: {key} = {raw!r} is not a number") from None
        if value <= 0:
            raise SetupError(f"[{self._section}]: {key} must be positive")
        return value

    def choice(self, key: str, choices: Iterable[str], default: str) -> str:
        allowed = tuple(choices)
        value = self.text(key, default)
        if value not in allowed:
            raise SetupError(f"[{self._section}]: {key} must be one of {', '.join(allowed)}")
        return value

    def words(self, key: str) -> tuple[str, ...]:
        """A comma-separated list (empty when the option is absent)."""
        raw = self._values.get(key, "")
        return tuple(word.strip() for word in raw.split(",") if word.strip())
