"""The last line every benchmark prints, and its exit code."""

from __future__ import annotations


def verdict(passed: bool, message: str) -> int:
    """Prints `PASS: message` or `FAIL: message` and returns the script's exit code (0 or 1)."""
    print(f"{'PASS' if passed else 'FAIL'}: {message}")
    return 0 if passed else 1
