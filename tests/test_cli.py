"""Every user error ends as one line on stderr and exit code 2, never a traceback."""

import subprocess
import sys

import pytest

from batchscale.cli import main

from conftest import ROOT

TINY = ["--width", "4", "--train-subset", "256", "--epochs", "1", "--batch-size", "64",
        "--quiet", "--threads", "2", "--device", "cpu"]


def one_line_error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("batchscale: error: "), err
    return err


@pytest.mark.parametrize("argv, expected", [
    (["train", "--out", "x", "--no-such-option", "1"], "unrecognized arguments"),
    (["train", "--out", "x", "--batch-size", "abc"], "batch_size must be int"),
    (["train", "--out", "x", "--batch-size", "100", "--bn-group", "32"], "not a multiple"),
    (["train", "--out", "x", "--optimizer", "adamw"], "optimizer must be one of"),
    (["train", "--out", "x", "--lr", "-1"], "lr must be positive"),
    (["train", "--out", "x", "--dataset", "/no/such/data.zip"], "neither sample"),
    (["train"], "required: --out"),
    (["nonsense"], "invalid choice"),
])
def test_user_errors_are_one_line_with_exit_code_2(capsys, tmp_path, argv, expected):
    argv = [a.replace("x", str(tmp_path / "x")) if a == "x" else a for a in argv]
    assert expected in one_line_error(capsys, argv)
    assert not (tmp_path / "x").exists()  # nothing is written before the error


def test_batch_larger_than_the_training_set(capsys, tmp_path):
    err = one_line_error(capsys, ["train", "--out", str(tmp_path / "r"), *TINY[:4],
                                  "--batch-size", "512"])
    assert "exceeds the 256 training images" in err


def test_archive_failing_its_md5_is_one_line(capsys, tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"corrupt bytes")
    err = one_line_error(capsys, ["train", "--out", str(tmp_path / "r"), "--dataset", "cifar10",
                                  "--data-dir", str(tmp_path), *TINY])
    assert "md5" in err.lower()


def test_existing_run_is_kept_and_resume_cannot_change_the_recipe(capsys, tmp_path):
    out = str(tmp_path / "r")
    assert main(["train", "--out", out, *TINY]) == 0
    assert "exists" in one_line_error(capsys, ["train", "--out", out, *TINY])
    err = one_line_error(capsys, ["train", "--out", out, "--resume", "--lr", "0.5"])
    assert "--lr differs" in err
    # how it is computed may change (layout, compile, threads), not what
    assert main(["train", "--out", out, "--resume", "--epochs", "2", "--channels-last", "off",
                 "--quiet"]) == 0


def test_config_file_is_read_and_options_win(capsys, tmp_path):
    (tmp_path / "c.yaml").write_text("width: 4\ntrain_subset: 256\nbatch_size: 64\nepochs: 1\n"
                                     "lr: 0.2\n")
    out = tmp_path / "r"
    assert main(["train", "--out", str(out), "--config", str(tmp_path / "c.yaml"), "--lr",
                 "0.1", "--quiet"]) == 0
    assert "lr: 0.1\n" in (out / "config.yaml").read_text()
    (tmp_path / "bad.yaml").write_text("widht: 4\n")
    assert "unknown config field 'widht'" in one_line_error(
        capsys, ["train", "--out", str(tmp_path / "s"), "--config", str(tmp_path / "bad.yaml")])


def test_the_console_entry_point_exits_2_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "batchscale", "train", "--out",
                             str(tmp_path / "r"), "--bn-group", "7"], capture_output=True,
                            text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr
