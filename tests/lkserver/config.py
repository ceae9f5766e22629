"""Keys and port from the project's `livekit.yaml`: the tests exercise the file developers use."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

LIVEKIT_YAML = Path(__file__).resolve().parents[2] / "livekit.yaml"


@dataclass(frozen=True)
class ServerConfig:
    api_key: str
    api_secret: str
    port: int


def load_config(path: Path = LIVEKIT_YAML) -> ServerConfig:
    """The first key pair and the signalling port of a livekit-server config file."""
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a mapping")
    keys = data.get("keys")
    if not isinstance(keys, dict) or not keys:
        raise ValueError(f"{path}: no `keys:` mapping")
    api_key, api_secret = next(iter(keys.items()))
    return ServerConfig(api_key=str(api_key), api_secret=str(api_secret), port=int(data["port"]))
