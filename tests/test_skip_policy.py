"""The CI skip policy in tests/conftest.py: with MEDVISION_STRICT_SKIPS=1 only CUDA-only skips are allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
CONFTEST = Path(__file__).with_name("conftest.py")
CUDA_SKIP = """
import pytest

@pytest.mark.skipif(True, reason="needs a CUDA GPU")
def test_gpu():
    pass

def test_ok():
    assert True
"""
OTHER_SKIP = (
    CUDA_SKIP
    + """
def test_browser():
    pytest.skip("/usr/bin/chromium is not installed")
"""
)


@pytest.fixture
def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    def inner(body: str, strict: bool) -> pytest.RunResult:
        pytester.makeconftest(CONFTEST.read_text())
        pytester.makepyfile(test_inner=body)
        if strict:
            monkeypatch.setenv("MEDVISION_STRICT_SKIPS", "1")
        else:
            monkeypatch.delenv("MEDVISION_STRICT_SKIPS", raising=False)
        return pytester.runpytest_inprocess("-p", "no:cacheprovider")

    return inner


def test_cuda_only_skips_pass_in_strict_mode(run) -> None:
    result = run(CUDA_SKIP, strict=True)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*skip reasons*", "*test_gpu: needs a CUDA GPU*"])


def test_any_other_skip_fails_in_strict_mode_and_is_listed(run) -> None:
    result = run(OTHER_SKIP, strict=True)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*test_browser: /usr/bin/chromium is not installed*", "*FAILED: 1 skip(s)*"])


def test_skips_are_listed_but_allowed_outside_ci(run) -> None:
    result = run(OTHER_SKIP, strict=False)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["*test_browser: /usr/bin/chromium is not installed*"])
