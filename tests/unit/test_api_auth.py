"""The session API's keys, rate limit and settings: keys are only ever known by fingerprint."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from worker.api.auth import MIN_KEY_LEN, ApiKeyError, ApiKeys, RateLimiter, fingerprint
from worker.logs import install_redaction
from worker.settings import DEFAULT_AGENT_NAME, ApiSettings, SettingsError

KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-fedcba9876543210"
KEY_C = "key-c-from-the-file-0001"
KEY_D = "key-d-from-the-file-0002"


def keys_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "api-keys"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_keys_come_from_the_variable_comma_separated_and_trimmed() -> None:
    keys = ApiKeys.from_env({"WORKER_API_KEYS": f" {KEY_A} ,{KEY_B},, "})
    assert keys.secrets() == [KEY_A, KEY_B]
    assert keys.identify(KEY_A) == fingerprint(KEY_A)
    assert keys.identify(KEY_B) == fingerprint(KEY_B)


def test_keys_come_from_the_file_one_per_line_skipping_blanks_and_comments(
    tmp_path: Path,
) -> None:
    path = keys_file(tmp_path, f"# rotated 2025-01\n\n{KEY_C}\n   \n  # old: none\n  {KEY_D}  \n")
    keys = ApiKeys.from_env({"WORKER_API_KEYS_FILE": path})
    assert keys.secrets() == [KEY_C, KEY_D]


def test_the_variable_and_the_file_combine(tmp_path: Path) -> None:
    path = keys_file(tmp_path, f"{KEY_C}\n")
    keys = ApiKeys.from_env({"WORKER_API_KEYS": KEY_A, "WORKER_API_KEYS_FILE": path})
    assert {keys.identify(k) for k in (KEY_A, KEY_C)} == {fingerprint(KEY_A), fingerprint(KEY_C)}


@pytest.mark.parametrize(
    "env",
    [{}, {"WORKER_API_KEYS": " , ,"}, {"WORKER_API_KEYS": "", "WORKER_API_KEYS_FILE": ""}],
    ids=["unset", "only-commas", "empty"],
)
def test_no_keys_is_an_error_naming_both_variables(env: dict[str, str]) -> None:
    with pytest.raises(ApiKeyError) as excinfo:
        ApiKeys.from_env(env)
    assert "WORKER_API_KEYS " in str(excinfo.value)
    assert "WORKER_API_KEYS_FILE" in str(excinfo.value)


def test_a_file_of_comments_only_gives_no_keys(tmp_path: Path) -> None:
    with pytest.raises(ApiKeyError, match="at least one key"):
        ApiKeys.from_env({"WORKER_API_KEYS_FILE": keys_file(tmp_path, "# none yet\n\n")})


def test_a_short_key_is_named_by_its_fingerprint_only() -> None:
    short = "tooshort-123"
    assert len(short) < MIN_KEY_LEN
    with pytest.raises(ApiKeyError) as excinfo:
        ApiKeys.from_env({"WORKER_API_KEYS": f"{KEY_A},{short}"})
    message = str(excinfo.value)
    assert fingerprint(short) in message
    assert short not in message
    assert KEY_A not in message
    assert fingerprint(KEY_A) not in message, "only the offending key is named"
    assert str(MIN_KEY_LEN) in message


@pytest.mark.parametrize("target", ["missing", "directory", "binary"])
def test_an_unreadable_file_is_an_error_naming_the_path(tmp_path: Path, target: str) -> None:
    path = tmp_path / "missing-keys" if target == "missing" else tmp_path
    if target == "binary":
        path = tmp_path / "keys.bin"
        path.write_bytes(KEY_A.encode() + b"\n\xff\xfe")
    with pytest.raises(ApiKeyError) as excinfo:
        ApiKeys.from_env({"WORKER_API_KEYS": KEY_A, "WORKER_API_KEYS_FILE": str(path)})
    message = str(excinfo.value)
    assert message.startswith(f"WORKER_API_KEYS_FILE={path}: cannot read it")
    assert KEY_A not in message
    assert excinfo.value.__cause__ is None
    assert excinfo.value.__suppress_context__, "no chained OSError in a traceback"


def test_identify_knows_only_whole_keys() -> None:
    keys = ApiKeys([KEY_A, KEY_B])
    assert keys.identify(KEY_A) == fingerprint(KEY_A)
    assert fingerprint(KEY_A).startswith("key-")
    assert len(fingerprint(KEY_A)) == len("key-") + 8
    for presented in ("", KEY_A[:-1], KEY_A[:MIN_KEY_LEN], KEY_A + "x", f" {KEY_A}", "key-c" * 4):
        assert keys.identify(presented) is None, presented


def test_the_repr_shows_no_key() -> None:
    keys = ApiKeys([KEY_A, KEY_B])
    for text in (repr(keys), str(keys), f"{keys!r}"):
        assert KEY_A not in text
        assert KEY_B not in text
    assert repr(keys) == "ApiKeys(2 keys)"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_rate_limit_allows_a_burst_then_says_how_long_to_wait() -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_minute=3, clock=clock)
    assert [limiter.allow("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.allow("k") == pytest.approx(20.0), "one token comes back every 60/3 s"
    clock.now += 5
    assert limiter.allow("k") == pytest.approx(15.0), "a refused request costs nothing"


def test_the_rate_limit_refills_over_time_up_to_one_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_minute=6, clock=clock)
    for _ in range(6):
        assert limiter.allow("k") == 0.0
    assert limiter.allow("k") > 0
    clock.now += 10  # one token
    assert limiter.allow("k") == 0.0
    assert limiter.allow("k") == pytest.approx(10.0)
    clock.now += 3600  # an idle hour refills to one burst, not sixty
    assert [limiter.allow("k") for _ in range(6)] == [0.0] * 6
    assert limiter.allow("k") > 0


def test_each_key_has_its_own_bucket() -> None:
    clock = FakeClock()
    limiter = RateLimiter(per_minute=2, clock=clock)
    assert limiter.allow("key-a") == 0.0
    assert limiter.allow("key-a") == 0.0
    assert limiter.allow("key-a") > 0
    assert limiter.allow("key-b") == 0.0
    assert limiter.allow("key-b") == 0.0
    assert limiter.allow("key-b") > 0


def test_api_settings_defaults_need_no_environment() -> None:
    settings = ApiSettings.from_env({})
    assert settings == ApiSettings()
    assert settings.host == "0.0.0.0"
    assert settings.port == 8000
    assert settings.livekit_url == ""
    assert settings.public_url == ""
    assert settings.agent_name == DEFAULT_AGENT_NAME
    assert settings.token_ttl == 600
    assert settings.empty_timeout == 120
    assert settings.max_participants == 3
    assert settings.rate_limit == 60
    assert settings.cors_origins == ()
    assert settings.dispatch_wait == 5.0


def test_api_settings_are_read() -> None:
    settings = ApiSettings.from_env(
        {
            "WORKER_API_HOST": "127.0.0.1",
            "WORKER_API_PORT": "9000",
            "LIVEKIT_URL": "ws://livekit:7880",
            "LIVEKIT_PUBLIC_URL": "wss://rtc.example.com",
            "LIVEKIT_AGENT_NAME": "support",
            "WORKER_API_TOKEN_TTL": "300",
            "WORKER_API_EMPTY_TIMEOUT": "30",
            "WORKER_API_MAX_PARTICIPANTS": "2",
            "WORKER_API_RATE_LIMIT": "600",
            "WORKER_API_CORS_ORIGINS": " https://app.example.com, ,https://admin.example.com ",
            "WORKER_API_DISPATCH_WAIT": "2.5",
        }
    )
    assert settings == ApiSettings(
        host="127.0.0.1",
        port=9000,
        livekit_url="ws://livekit:7880",
        public_url="wss://rtc.example.com",
        agent_name="support",
        token_ttl=300,
        empty_timeout=30,
        max_participants=2,
        rate_limit=600,
        cors_origins=("https://app.example.com", "https://admin.example.com"),
        dispatch_wait=2.5,
    )


def test_the_public_url_defaults_to_the_livekit_url() -> None:
    env = {"LIVEKIT_URL": "ws://livekit:7880"}
    assert ApiSettings.from_env(env).public_url == "ws://livekit:7880"
    assert ApiSettings.from_env({**env, "LIVEKIT_PUBLIC_URL": ""}).public_url == env["LIVEKIT_URL"]
    for server_api, client in (
        ("https://lk.example.com", "wss://lk.example.com"),
        ("http://lk:7880", "ws://lk:7880"),
    ):
        assert ApiSettings.from_env({"LIVEKIT_URL": server_api}).public_url == client


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("WORKER_API_PORT", "http", "WORKER_API_PORT='http' is not a whole number"),
        ("WORKER_API_PORT", "-1", "WORKER_API_PORT='-1' must be at least 0"),
        ("WORKER_API_PORT", "70000", "WORKER_API_PORT=70000 is not a port (0-65535)"),
        ("WORKER_API_TOKEN_TTL", "5", "WORKER_API_TOKEN_TTL='5' must be at least 10"),
        ("WORKER_API_TOKEN_TTL", "10m", "WORKER_API_TOKEN_TTL='10m' is not a whole number"),
        ("WORKER_API_EMPTY_TIMEOUT", "0", "WORKER_API_EMPTY_TIMEOUT='0' must be at least 1"),
        ("WORKER_API_MAX_PARTICIPANTS", "1", "WORKER_API_MAX_PARTICIPANTS='1' must be at least 2"),
        ("WORKER_API_RATE_LIMIT", "0", "WORKER_API_RATE_LIMIT='0' must be at least 1"),
        ("WORKER_API_RATE_LIMIT", "1.5", "WORKER_API_RATE_LIMIT='1.5' is not a whole number"),
        ("WORKER_API_DISPATCH_WAIT", "soon", "WORKER_API_DISPATCH_WAIT='soon' is not a number"),
        ("WORKER_API_DISPATCH_WAIT", "-1", "WORKER_API_DISPATCH_WAIT='-1' must not be negative"),
    ],
)
def test_bad_api_settings_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as excinfo:
        ApiSettings.from_env({name: value})
    assert message in str(excinfo.value)


def test_api_keys_from_a_file_are_redacted_from_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = ApiKeys.from_env({"WORKER_API_KEYS_FILE": keys_file(tmp_path, f"{KEY_C}\n{KEY_D}\n")})
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [handler])  # pytest's own handlers stay untouched
    install_redaction({}, extra=keys.secrets())
    log = logging.getLogger("test.api_keys")
    log.warning("rejected Authorization: Bearer %s", KEY_C)
    log.warning("header was %r", {"x-api-key": KEY_D})
    output = stream.getvalue()
    assert KEY_C not in output
    assert KEY_D not in output
    assert output.count("[redacted]") == 2
    assert "Bearer [redacted]" in output
