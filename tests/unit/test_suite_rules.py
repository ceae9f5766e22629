"""The rules every test run follows: groups by directory, and no silent skips under CI."""

from __future__ import annotations

from pathlib import Path

import pytest

SUITE_CONFTEST = (Path(__file__).resolve().parents[1] / "conftest.py").read_text(encoding="utf-8")
SUITE_CONFTEST = SUITE_CONFTEST.replace('pytest_plugins = ["pytester"]', "")


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(SUITE_CONFTEST)
    pytester.makeini(
        "[pytest]\nasyncio_default_fixture_loop_scope = function\n"
        "markers =\n    unit: u\n    pipeline: p\n"
    )
    return pytester


def test_a_skipped_test_fails_under_ci(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    suite.mkdir("unit")
    suite.makepyfile(
        **{"unit/test_x.py": "import pytest\ndef test_x():\n    pytest.skip('no tool')\n"}
    )
    monkeypatch.delenv("CI", raising=False)
    suite.runpytest("-p", "no:cacheprovider").assert_outcomes(skipped=1)
    monkeypatch.setenv("CI", "true")
    result = suite.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*skipped under CI=true (not allowed)*"])


def test_tests_are_grouped_by_directory(suite: pytest.Pytester) -> None:
    suite.mkdir("unit")
    suite.mkdir("pipeline")
    suite.makepyfile(**{"unit/test_a.py": "def test_a():\n    pass\n"})
    suite.makepyfile(**{"pipeline/test_b.py": "def test_b():\n    pass\n"})
    suite.runpytest("-p", "no:cacheprovider", "-m", "unit").assert_outcomes(passed=1, deselected=1)
    suite.makepyfile(**{"test_stray.py": "def test_stray():\n    pass\n"})
    result = suite.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_stray.py::test_stray: tests live in one of tests/*"])
