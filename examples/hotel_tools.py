"""The Harbor Hotel's room availability: the concierge agent's `python` tool (prompts/concierge.md,
`function: examples.hotel_tools:rooms_available`).

The worker imports it at start from its working directory (run `python -m worker ...` from the
repository, or from `/app` in the Docker image) and checks its signature against the tool's
`parameters`. A plain `def` like this one runs in a thread, so a slow lookup (a database, a
booking engine's SDK) never stalls the call's audio. Replace it with your own module.
"""

from __future__ import annotations

import datetime as dt

NIGHTLY_RATES = {"queen room": 189, "king room": 219, "harbor suite": 389}
FULL_ON_WEEKENDS = {"queen room", "king room"}


def rooms_available(check_in: str, nights: int) -> dict[str, object]:
    """The room types free for the whole stay, with their nightly rates."""
    try:
        first = dt.date.fromisoformat(check_in)
    except ValueError:
        return {"error": "check_in must be a date such as 2026-12-24"}
    stay = [first + dt.timedelta(days=n) for n in range(nights)]
    weekend = any(night.weekday() in (4, 5) for night in stay)  # Friday or Saturday nights
    free = {
        room: rate
        for room, rate in NIGHTLY_RATES.items()
        if not (weekend and room in FULL_ON_WEEKENDS)
    }
    return {
        "check_in": first.isoformat(),
        "nights": nights,
        "available": [{"room": room, "nightly_rate_usd": rate} for room, rate in free.items()],
    }
