"""`jaga serve`'s options, parsed, and what it and `jaga worker` refuse to start with (the servers they start are
in tests/e2e)."""

from __future__ import annotations

import argparse

import pytest
import torch

from api.cli import MAX_API_WORKERS, _workers, main
from api.core.settings import get_settings


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


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
@pytest.mark.parametrize("command", [["serve", "--port", "1"], ["worker"]])
def test_serve_and_worker_refuse_a_cuda_device_this_machine_lacks(command, monkeypatch, tmp_path):
    monkeypatch.setenv("JAGA_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("JAGA_DEVICE", "cuda")
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit) as exited:
            main(command)
    finally:
        get_settings.cache_clear()
    assert str(exited.value.code).startswith("jaga: JAGA_DEVICE: device 'cuda' asked for, but PyTorch")
    assert not (tmp_path / "jaga.db").exists()  # refused before touching the data directory


def test_bad_settings_are_one_line_naming_each_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("JAGA_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("JAGA_DEVICE", "gpu")
    monkeypatch.setenv("JAGA_MAX_UPLOAD_BYTES", "1")
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit) as exited:
            main(["keys", "list"])
    finally:
        get_settings.cache_clear()
    message = str(exited.value.code)
    assert message.startswith("jaga: bad settings: JAGA_DEVICE: String should match pattern")
    assert "; JAGA_MAX_UPLOAD_BYTES: Input should be greater than or equal to 1024" in message


def test_a_rule_across_settings_is_reported_in_its_own_words(monkeypatch, tmp_path):
    monkeypatch.setenv("JAGA_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("JAGA_ENV", "production")
    get_settings.cache_clear()
    try:
        with pytest.raises(SystemExit) as exited:
            main(["worker"])
    finally:
        get_settings.cache_clear()
    assert exited.value.code == (
        "jaga: bad settings: JAGA_DATABASE_URL must name a server database in production, not SQLite"
    )
