"""EC2 filter values matched in memory: `*` (any run), `?` (any one character), `\\` escapes.

A translation to a regular expression backtracks: `**…*Z` against a value without a Z takes
time exponential in the number of stars, on the event loop. The matcher here keeps one
position to go back to (the last star), so a match costs at most the pattern's length times
the value's.
"""

from __future__ import annotations

from dataclasses import dataclass

# The tokens of a pattern: a literal is one character, these two are longer.
_ANY = "any"
_STAR = "star"


@dataclass(frozen=True)
class Wildcard:
    tokens: tuple[str, ...]

    @classmethod
    def parse(cls, pattern: str) -> Wildcard:
        tokens: list[str] = []
        chars = iter(pattern)
        for ch in chars:
            if ch == "\\":
                tokens.append(next(chars, "\\"))
            elif ch == "*":
                if not tokens or tokens[-1] != _STAR:
                    tokens.append(_STAR)
            elif ch == "?":
                tokens.append(_ANY)
            else:
                tokens.append(ch)
        return cls(tuple(tokens))

    def fullmatch(self, text: str) -> bool:
        """Whether the whole of ``text`` matches."""
        tokens = self.tokens
        at = 0  # the next token
        star = -1  # the last star's token, once one is met
        resume = 0  # where in text that star's run ends for now
        pos = 0
        while pos < len(text):
            if at < len(tokens) and tokens[at] in (_ANY, text[pos]):
                at += 1
                pos += 1
            elif at < len(tokens) and tokens[at] == _STAR:
                star, resume = at, pos
                at += 1
            elif star >= 0:
                # The last star takes one more character; what follows it starts again.
                resume += 1
                at, pos = star + 1, resume
            else:
                return False
        return all(token == _STAR for token in tokens[at:])
