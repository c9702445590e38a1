"""`jaga serve`'s options, parsed (the servers they start are in tests/e2e)."""

from __future__ import annotations

import argparse

import pytest

from api.cli import MAX_API_WORKERS, _workers, main


@pytest.mark.parametrize("text", ["1", "2", str(MAX_API_WORKERS)])
def test_workers_takes_a_whole_number_of_processes(text):
    assert _workers(text) == int(text)


@pytest.mark.parametrize("text", ["0", "-1", "1.5", "two", "", str(MAX_API_WORKERS + 1)])
def test_workers_refuses_anything_else(text):
    with pytest.raises(argparse.ArgumentTypeError, match=f"from 1 to {MAX_API_WORKERS}"):
        _workers(text)


def test_serve_with_bad_workers_exits_with_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--workers", "0"])
    assert exited.value.code == 2
    assert "--workers: must be a whole number from 1 to 64, not '0'" in capsys.readouterr().err
