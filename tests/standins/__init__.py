"""Local servers that speak Deepgram's, OpenAI's and ElevenLabs' wire protocols, so the real
LiveKit plugins run against them in tests (their `base_url` points here)."""
