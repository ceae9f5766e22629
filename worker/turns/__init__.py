"""Turn-taking: when the caller's turn is over, and which sounds over the agent are not a turn.

- `smart_turn`: Pipecat's Smart Turn v3 end-of-turn model (ONNX), installed and verified once;
- `phrases`: per-language word lists (acknowledgements, words a sentence cannot end on);
- `detector`: the end-of-turn detector the session asks before it answers;
- `barge_in`: acknowledgements over the agent's speech that are neither a turn nor a barge-in;
- `call_turns`: both, wired into one call's session.
"""
