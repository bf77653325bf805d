"""scripts/run_tests.py, which `make test` uses: files dealt to shards by their recorded seconds,
every shard's result reported, a failure in any shard fails the run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import run_tests  # noqa: E402

from conftest import PATIENCE_S  # noqa: E402


def test_files_are_dealt_longest_first_to_the_lighter_shard():
    seconds = {"test_a.py": 10, "test_b.py": 7, "test_c.py": 5, "test_d.py": 4}
    # a -> 1 (10 | 0), b -> 2 (10 | 7), c -> 2 (10 | 12), d -> 1 (14 | 12)
    assert run_tests.deal(sorted(seconds), seconds, 2) == [["test_a.py", "test_d.py"],
                                                           ["test_b.py", "test_c.py"]]
    # a file with no record counts as the median (6): a, then new -> 2, b -> 2 (10 | 13)
    assert run_tests.deal(["test_a.py", "test_b.py", "test_new.py"], seconds, 2) == [
        ["test_a.py"], ["test_b.py", "test_new.py"]]
    assert run_tests.deal(["test_a.py"], seconds, 2) == [["test_a.py"]]


def test_every_shard_runs_and_a_failing_one_fails_the_run(tmp_path):
    (tmp_path / "test_pass.py").write_text("def test_one():\n    assert 1 + 1 == 2\n")
    (tmp_path / "test_fail.py").write_text("def test_two():\n    assert 1 + 1 == 3\n")
    (tmp_path / "durations.json").write_text(json.dumps({"test_pass.py": 2, "test_fail.py": 1}))
    command = [sys.executable, str(ROOT / "scripts" / "run_tests.py"), "--tests", str(tmp_path),
               "--shards", "2", "-p", "no:randomly"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=PATIENCE_S)
    assert result.returncode == 1, result.stdout
    assert "shard 1/2: 1 files" in result.stdout and "---- shard 2/2 ----" in result.stdout
    assert "1 passed" in result.stdout and "1 failed" in result.stdout
    assert "shards' exit codes: [0, 1]" in result.stdout  # test_pass (2 s) was dealt first

    (tmp_path / "test_fail.py").write_text("def test_two():\n    assert 1 + 1 == 2\n")
    result = subprocess.run([*command, "--record"], capture_output=True, text=True,
                            timeout=PATIENCE_S)
    assert result.returncode == 0, result.stdout
    recorded = json.loads((tmp_path / "durations.json").read_text())
    assert sorted(recorded) == ["test_fail.py", "test_pass.py"]
    assert all(isinstance(s, float) and s >= 0 for s in recorded.values())


def test_durations_are_recorded_by_file_when_the_clone_shares_a_folder_with_the_tests(tmp_path):
    """A clone under the temporary folder's parent (a clone in /tmp, say): the inner pytest finds
    no config above the tests, so its rootdir is the common ancestor of the clone (its working
    directory) and the tests, and the JUnit classnames gain the folders in between, here one
    named test_..., as pytest's own tmp_path folders are."""
    clone = tmp_path / "clone"
    (clone / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "run_tests.py", clone / "scripts" / "run_tests.py")
    tests = tmp_path / "tmp" / "test_something0"
    tests.mkdir(parents=True)
    (tests / "test_pass.py").write_text("def test_one():\n    assert 1 + 1 == 2\n")
    (tests / "test_also.py").write_text("class TestTwo:\n    def test_two(self):\n"
                                        "        assert 2 + 2 == 4\n")
    result = subprocess.run([sys.executable, str(clone / "scripts" / "run_tests.py"), "--tests",
                             str(tests), "--shards", "2", "--record"],
                            capture_output=True, text=True, timeout=PATIENCE_S)
    assert result.returncode == 0, result.stdout
    assert sorted(json.loads((tests / "durations.json").read_text())) == ["test_also.py",
                                                                         "test_pass.py"]


def test_file_seconds_takes_the_test_file_from_the_classname(tmp_path):
    junit = tmp_path / "report.xml"
    junit.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tmp.test_every0.test_pass" name="test_one" time="1.5"/>'
        '<testcase classname="test_x0.tests.test_also.TestTwo" name="test_two" time="0.25"/>'
        '<testcase classname="tests.test_also" name="test_three" time="0.5"/>'
        '</testsuite></testsuites>')
    assert run_tests.file_seconds(junit) == {"test_pass.py": 1.5, "test_also.py": 0.75}
