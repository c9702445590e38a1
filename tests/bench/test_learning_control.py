"""bench/learning_control.py's pure parts: reading ``--param``/``--config`` overrides and merging re-measured
rows into the docs section (the training itself is the learning tests')."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))  # the scripts import ``common``

import common
import learning_control as lc


def test_overrides_parse_json_values_and_keep_other_text_as_strings() -> None:
    assert lc.overrides(
        ["crop_min_scale=0.6", "optimizer=sgd", "patch_size=null", "head_batch_norm=true"], "--param"
    ) == {"crop_min_scale": 0.6, "optimizer": "sgd", "patch_size": None, "head_batch_norm": True}


@pytest.mark.parametrize("pair", ["crop_min_scale", "=0.6"])
def test_an_override_without_a_key_and_a_value_is_refused(pair: str) -> None:
    with pytest.raises(SystemExit, match="expected key=value"):
        lc.overrides([pair], "--param")


SECTION = (
    "\n".join(
        [
            "## What training adds",
            "",
            "Measured 2026-12-01 10:00 UTC by `bench/learning_control.py`.",
            "",
            "| Method | Backbone | Epochs | Random init | Control | Trained | Trained − control | "
            "Trained − random init | Minutes |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
            "| byol | resnet18 | 8 | 0.760 | 0.723 | 0.692 | -0.031 | -0.068 | 1.4 |",
            "| simclr | resnet18 | 8 | 0.760 | 0.740 | 0.790 | +0.050 | +0.030 | 1.2 |",
            "",
            lc.CURVES_HEADING,
            "",
            "- byol: 4: 0.700, 8: 0.692",
            "- simclr: 4: 0.750, 8: 0.790",
        ]
    )
    + "\n"
)


def test_a_merge_replaces_only_the_named_rows_and_says_when() -> None:
    row = lc.Row("byol", "resnet18", 0.760, 0.723, 0.771, 16, 120.0, [(8, 0.75), (16, 0.771)])
    out = lc.merged(SECTION, [row], "bench/learning_control.py --methods byol --merge")
    lines = out.splitlines()
    assert "| byol | resnet18 | 16 | 0.760 | 0.723 | 0.771 | +0.048 | +0.011 | 2.0 |" in lines
    assert "- byol: 8: 0.750, 16: 0.771" in lines
    for kept in (
        "| simclr | resnet18 | 8 | 0.760 | 0.740 | 0.790 | +0.050 | +0.030 | 1.2 |",
        "- simclr: 4: 0.750, 8: 0.790",
        "Measured 2026-12-01 10:00 UTC by `bench/learning_control.py`.",
    ):
        assert kept in lines
    note = lines[lines.index("Measured 2026-12-01 10:00 UTC by `bench/learning_control.py`.") + 1]
    assert note.startswith("Re-measured ")
    assert "`bench/learning_control.py --methods byol --merge`" in note
    assert "the row of byol" in note
    assert not any("0.692" in line for line in lines)


def test_a_merge_without_a_curve_says_the_old_curve_is_gone() -> None:
    out = lc.merged(SECTION, [lc.Row("simclr", "resnet18", 0.76, 0.74, 0.8, 8, 60.0)], "cmd")
    assert "- simclr: not measured in its last run" in out.splitlines()


def test_a_merge_of_a_method_without_a_row_adds_it_in_name_order() -> None:
    # Raising here, after a run of up to an hour, would throw the measurement away.
    out = lc.merged(SECTION, [lc.Row("moco", "resnet18", 0.76, 0.72, 0.79, 16, 60.0, [(16, 0.79)])], "cmd")
    lines = out.splitlines()
    row = "| moco | resnet18 | 16 | 0.760 | 0.720 | 0.790 | +0.070 | +0.030 | 1.0 |"
    simclr = "| simclr | resnet18 | 8 | 0.760 | 0.740 | 0.790 | +0.050 | +0.030 | 1.2 |"
    assert lines.index(row) == lines.index(simclr) - 1
    assert lines.index("- moco: 16: 0.790") == lines.index("- simclr: 4: 0.750, 8: 0.790") - 1
    last = lc.merged(SECTION, [lc.Row("swav", "resnet18", 0.76, 0.7, 0.7, 8, 60.0, [(8, 0.7)])], "cmd").splitlines()
    simclr = last.index("| simclr | resnet18 | 8 | 0.760 | 0.740 | 0.790 | +0.050 | +0.030 | 1.2 |")
    assert last[simclr + 1] == "| swav | resnet18 | 8 | 0.760 | 0.700 | 0.700 | +0.000 | -0.060 | 1.0 |"
    assert last[last.index("- simclr: 4: 0.750, 8: 0.790") + 1] == "- swav: 8: 0.700"


@pytest.mark.parametrize(
    ("params", "config", "message"),
    [
        ({"crop_min_scale": 5}, {}, "byol: BYOLParams: crop_min_scale: must be less than or equal to 1.0, got 5"),
        (
            {"nope": 1},
            {},
            "byol: BYOLParams: nope: unknown field "
            "(BYOLParams takes hidden_dim, projection_dim, base_momentum, crop_min_scale)",
        ),
        ({}, {"optimizer": "foo"}, "byol: TrainConfig: optimizer: must be 'sgd', 'lars' or 'adamw', got 'foo'"),
    ],
)
def test_invalid_overrides_stop_the_run_before_training_with_the_field_named(
    params: dict[str, object], config: dict[str, object], message: str
) -> None:
    with pytest.raises(SystemExit) as stopped:
        lc.check_overrides(["byol", "simsiam"], params, config, epochs=None, seed=0)
    assert str(stopped.value) == message


def test_valid_overrides_pass_the_check_and_reach_the_config() -> None:
    lc.check_overrides(["byol"], {"crop_min_scale": 0.6}, {"optimizer": "sgd", "batch_size": 64}, None, 0)
    cfg = lc.experiment_config("byol", None, 0, {"optimizer": "sgd", "batch_size": 64})
    assert (cfg.optimizer, cfg.batch_size, cfg.image_size) == ("sgd", 64, 32)


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=repo, check=True, capture_output=True
    )


def test_uncommitted_code_lists_changed_and_new_files_under_the_code_directories(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "ssl_core").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "ssl_core" / "a.py").write_text("x = 1\n")
    (tmp_path / "docs" / "BENCHMARKS.md").write_text("# Benchmarks\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "init")
    monkeypatch.setattr(common, "ROOT", tmp_path)
    assert common.uncommitted_code() == []
    (tmp_path / "ssl_core" / "a.py").write_text("x = 2\n")
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "new.py").write_text("")
    (tmp_path / "docs" / "BENCHMARKS.md").write_text("# Benchmarks, rewritten\n")  # what a run writes: not code
    assert sorted(common.uncommitted_code() or []) == ["bench/new.py", "ssl_core/a.py"]
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "more")
    _git(tmp_path, "mv", "ssl_core/a.py", "ssl_core/b.py")  # a staged rename names the new path
    assert common.uncommitted_code() == ["ssl_core/b.py"]


def test_uncommitted_code_is_unknown_outside_a_git_checkout(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(common, "ROOT", tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # no repository above tmp_path either
    assert common.uncommitted_code() is None


def test_a_run_that_would_write_the_docs_refuses_patched_code() -> None:
    with pytest.raises(SystemExit, match=r"ssl_core/methods/byol\.py.*--no-doc"):
        lc.refuse_patched_code(["ssl_core/methods/byol.py"])
    lc.refuse_patched_code([])  # committed code: goes on
    lc.refuse_patched_code(None)  # not a checkout: nobody can tell, goes on


@pytest.mark.parametrize(
    ("epochs", "control"), [(192, lc.CONTROL_EPOCHS), (lc.CONTROL_EPOCHS, lc.CONTROL_EPOCHS), (2, 2)]
)
def test_the_control_runs_the_methods_epochs_up_to_its_cap(epochs: int, control: int) -> None:
    assert lc.control_epochs(lc.experiment_config("byol", epochs, 0, {})) == control


@pytest.fixture
def doc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(common, "DOC", tmp_path / "docs" / "BENCHMARKS.md")
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path / "results")
    return common.DOC


def test_a_section_written_from_the_current_one_sees_what_is_there(doc: Path) -> None:
    seen: list[str | None] = []
    common.write_section("s", lambda current: seen.append(current) or "one\n")
    common.write_section("s", lambda current: seen.append(current) or f"{current}two\n")
    assert seen == [None, "one\n"]
    assert common.read_section("s") == "one\ntwo\n"
    assert doc.read_text().count("<!-- s:begin -->") == 1


def test_sections_rewritten_side_by_side_keep_each_others_rows(doc: Path) -> None:
    """Two writers that each read the section, take their time and write it back: under the lock the second
    reads what the first wrote, so neither row is lost."""
    common.write_section("s", "rows:\n")

    def add(row: str) -> None:
        def update(current: str | None) -> str:
            time.sleep(0.2)  # a reader without the lock would now be holding a stale copy
            return f"{current}{row}\n"

        common.write_section("s", update)

    threads = [threading.Thread(target=add, args=(row,)) for row in ("swav", "dino")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(common.read_section("s").splitlines()) == ["dino", "rows:", "swav"]
