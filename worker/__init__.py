"""A LiveKit voice-agent worker: room-name routing, per-agent prompts, STT -> LLM -> TTS with
barge-in, client events over the data channel, and a managed call lifecycle."""
