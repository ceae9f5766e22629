"""A caller in a process of its own, for the test that kills one: no leave, its sockets just die.

`python -m tests.e2e.caller_process URL TOKEN RECORDING UTTERANCE` joins the room, says the
recording's utterance once the agent has greeted, and prints every event it gets as a JSON line,
until it is killed.
"""

from __future__ import annotations

import asyncio
import json
import sys

from tests.e2e.calls import Caller
from tests.harness import Recording


async def main(url: str, token: str, recording_name: str, utterance: str) -> None:
    recording = Recording.load(recording_name)
    caller = Caller(url, token)
    await caller.join()
    printed, asked = 0, False
    while True:
        for event in caller.events[printed:]:
            print(json.dumps(event), flush=True)
            greeted = event["type"] == "transcript" and event["role"] == "agent"
            if greeted and event.get("final") and not asked:
                caller.play(recording.clip(utterance))
                asked = True
        printed = len(caller.events)
        await asyncio.sleep(0.02)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
