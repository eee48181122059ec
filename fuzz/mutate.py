"""Volume from structure: frames made by mutating a hypothesis-generated corpus at JSON level.

Hypothesis (fuzz/frames.py) draws a few thousand frames of the protocol's shapes and
boundaries; this mutator turns them into millions, tens of thousands per second: a value at a
random path replaced by a boundary value or another type, a key dropped or added, a subtree
spliced in from another frame, nesting deepened, or the text cut, bit-flipped or padded.
Seeded: the same seed gives the same frames.
"""

from __future__ import annotations

import json
import random
from typing import Any

from protocol import wire

BOUNDARIES: list[Any] = [
    None, True, False, 0, -1, 1, wire.MAX_SEQ, wire.MAX_SEQ + 1, 2**63, 2**64, -(2**63), 1e308, -1e308, 5e-324,
    0.5, "", "x" * 300, "\u00e9\u00fc", "\U0001f600", [], {}, [1, [2, [3]]], {"a": {"b": {"c": 1}}},
    "temperature", "ewt_" + "A" * 32, "c-x", 32503680000000, "data", "status", "result", "auth",
]
KEYS = ["t", "seq", "r", "m", "ts", "up", "q", "boot", "device_id", "id", "ok", "msg", "data", "token", "jwt",
        "temperature", "humidity", "x", ""]


def _containers(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths of (at most 200 of) the objects and arrays in ``value``."""
    found: list[tuple[Any, ...]] = []
    stack = [(value, path)]
    while stack and len(found) < 200:
        node, where = stack.pop()
        found.append(where)
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in items:
            if isinstance(child, dict | list) and len(stack) < 400:
                stack.append((child, (*where, key)))
    return found


def _at(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        value = value[step]
    return value


class Mutator:
    def __init__(self, corpus: list[str | bytes], seed: int = 0) -> None:
        if not corpus:
            raise ValueError("empty corpus")
        self.corpus = corpus
        self.rng = random.Random(seed)
        self.parsed: list[Any] = []
        for frame in corpus:
            try:
                self.parsed.append(json.loads(frame) if isinstance(frame, str) and len(frame) < 20_000 else None)
            except (ValueError, RecursionError):
                self.parsed.append(None)
        self.objects = [p for p in self.parsed if isinstance(p, dict | list)]

    def frame(self, seq: int) -> str | bytes:
        """One frame; a data frame's seq is often set to ``seq`` so that it can be accepted."""
        rng = self.rng
        index = rng.randrange(len(self.corpus))
        parsed = self.parsed[index]
        roll = rng.random()
        if parsed is None or roll < 0.15:
            return self._text(self.corpus[index]) if roll < 0.1 else self.corpus[index]
        value = json.loads(json.dumps(parsed))  # a private copy
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            value = self._structural(value)
        if isinstance(value, dict) and value.get("t") == "data" and rng.random() < 0.7:
            value["seq"] = seq
        try:
            text = json.dumps(value)
        except (ValueError, RecursionError):
            return self.corpus[index]
        return self._text(text) if rng.random() < 0.05 else text

    def _boundary(self) -> Any:
        value = self.rng.choice(BOUNDARIES)
        return json.loads(json.dumps(value)) if isinstance(value, dict | list) else value  # never shared

    def _structural(self, value: Any) -> Any:
        rng = self.rng
        paths = _containers(value) if isinstance(value, dict | list) else []
        if not paths:
            return self._boundary()
        path = rng.choice(paths)
        node = _at(value, path)
        action = rng.randrange(6)
        if isinstance(node, dict):
            key = rng.choice(list(node)) if node and action < 4 else rng.choice(KEYS)
            if action == 0 and node:
                del node[key]
            elif action == 5 and self.objects:
                node[key] = json.loads(json.dumps(rng.choice(self.objects)))  # splice
            elif action == 4:
                depth = rng.choice((2, 8, 64, 256, 300))
                nested: Any = self._boundary()
                for _ in range(depth):
                    nested = [nested]
                node[key] = nested
            else:
                node[key] = self._boundary()
        else:  # a list
            if node and action == 0:
                node.pop(rng.randrange(len(node)))
            elif node and action == 1 and len(node) < 2000:
                node.extend(node[: rng.randrange(min(len(node), 20)) + 1] * rng.choice((1, 2, 50)))
            elif node:
                node[rng.randrange(len(node))] = self._boundary()
            else:
                node.append(self._boundary())
        return value

    def _text(self, frame: str | bytes) -> str | bytes:
        rng = self.rng
        if isinstance(frame, bytes) or not frame:
            return frame
        position = rng.randrange(len(frame))
        action = rng.randrange(4)
        if action == 0:
            return frame[:position]
        if action == 1:
            return frame[:position] + chr((ord(frame[position]) ^ (1 << rng.randrange(7))) or 32) + frame[position + 1:]
        if action == 2:
            return frame[:position] + rng.choice(["NaN", "Infinity", "-", "\\u0000", '"', "]", "}", "1e999",
                                                  "\\ud800", ",,", "\x00"]) + frame[position:]
        return frame + frame[position:]
