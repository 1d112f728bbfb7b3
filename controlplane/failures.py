"""Failures of a background loop in a row (a database away): logged when they start, again once
a minute while they go on, and when the loop works again, instead of once per pass."""

from __future__ import annotations

import time

#: How often a failure that goes on is logged again.
REPEAT_LOG_SECONDS = 60.0


class FailureStreak:
    """Counts a loop's failed passes in a row and says which are worth logging."""

    def __init__(self, repeat_seconds: float = REPEAT_LOG_SECONDS) -> None:
        self.repeat_seconds = repeat_seconds
        self.count = 0
        self._said = 0.0

    def failed(self) -> bool:
        """Count a failed pass; True when it should be logged (the first of a streak, then one
        per ``repeat_seconds``)."""
        self.count += 1
        now = time.monotonic()
        if self.count == 1 or now - self._said >= self.repeat_seconds:
            self._said = now
            return True
        return False

    def succeeded(self) -> int:
        """End the streak; how many passes it had failed (0: there was none)."""
        count, self.count = self.count, 0
        return count
