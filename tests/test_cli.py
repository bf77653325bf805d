"""Every user error ends as one line on stderr and exit code 2, never a traceback."""

import io
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
import torch
from PIL import Image

from batchscale.cli import build_parser, main
from batchscale.engine.train import RunScale, train

from conftest import PATIENCE_S, ROOT, tiny_config

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
    # every float field must be finite; the seed and threads are bounded
    (["train", "--out", "x", "--lr", "inf"], "lr must be a finite number"),
    (["train", "--out", "x", "--momentum", "nan"], "momentum must be a finite number"),
    (["train", "--out", "x", "--weight-decay", "nan"], "weight_decay must be a finite number"),
    (["train", "--out", "x", "--warmup-epochs", "nan"], "warmup_epochs must be a finite"),
    (["train", "--out", "x", "--rmsprop-eps", "nan"], "rmsprop_eps must be a finite number"),
    (["train", "--out", "x", "--seed", "1e20"], "seed must be in [0, 2^32)"),
    (["train", "--out", "x", "--seed", "-1"], "seed must be in [0, 2^32)"),
    (["train", "--out", "x", "--threads", "100000"], "cores of this machine"),
    (["train", "--out", "x", "--extend-epochs", "--epochs", "3"], "needs --resume"),
    (["bench", "--json", "/no/such/folder/x.json"], "does not exist"),
    (["study", "demo", "--dry-run", "--set", "threads=100000"], "cores of this machine"),
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
    assert main(["train", "--out", out, "--resume", "--channels-last", "off", "--quiet"]) == 0


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
                            text=True, cwd=ROOT, timeout=PATIENCE_S)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr


# ---------------------------------------------------------------------- bad inputs (trust)
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished tiny run, copied by the tests that damage it."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "--out", str(out), *TINY]) == 0
    return out


def study_of(trained, tmp_path):
    """A study folder holding a copy of `trained` as its only run."""
    study = tmp_path / "study"
    shutil.copytree(trained, study / "trivial" / "b64" / "seed0")
    return study


def test_out_that_is_a_file_or_read_only_is_refused_before_the_data_loads(capsys, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    missing = ["--dataset", str(tmp_path / "no-such-data.zip")]  # would fail if loaded
    err = one_line_error(capsys, ["train", "--out", str(afile), *TINY, *missing])
    assert "is a file" in err and afile.read_text() == "mine"
    if os.geteuid() == 0:  # root writes anywhere chmod forbids; sysfs refuses even root
        read_only = "/sys/batchscale-test-out"
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        read_only = str(locked / "run")
    err = one_line_error(capsys, ["train", "--out", read_only, *TINY, *missing])
    assert "cannot write in" in err


def test_study_out_that_is_a_file(capsys, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    err = one_line_error(capsys, ["study", "demo", "--out", str(afile), "--set", "width=4"])
    assert "is a file" in err and afile.read_text() == "mine"


def test_report_of_a_run_directory_and_bad_target(capsys, tmp_path, trained):
    assert "is a run directory" in one_line_error(capsys, ["report", str(trained)])
    study = study_of(trained, tmp_path)
    for target in ("2", "0", "nan"):
        assert "--target" in one_line_error(capsys, ["report", str(study), "--target", target])


@pytest.mark.parametrize("name, text", [
    ("metrics.jsonl", "this is not json\n"),
    ("metrics.jsonl", '{"epoch": 1}\n[1, 2]\n'),
    ("summary.json", "{garbage"),
    ("summary.json", "[]"),
    ("config.yaml", "batch_size: [unclosed\n"),
])
def test_report_on_garbage_files_is_one_line(capsys, tmp_path, trained, name, text):
    study = study_of(trained, tmp_path)
    (study / "trivial" / "b64" / "seed0" / name).write_text(text)
    err = one_line_error(capsys, ["report", str(study)])
    assert "cannot read" in err or "not a JSON object" in err


def test_foreign_checkpoint_on_resume_is_one_line(capsys, tmp_path, trained):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    torch.save({"weights": torch.zeros(3)}, run / "checkpoint.pt")
    err = one_line_error(capsys, ["train", "--out", str(run), "--resume", "--quiet"])
    assert "not a batchscale training checkpoint" in err
    state = torch.load(trained / "checkpoint.pt", weights_only=True)
    state["model"] = {"conv1.weight": torch.zeros(1)}  # another model's weights
    torch.save(state, run / "checkpoint.pt")
    err = one_line_error(capsys, ["train", "--out", str(run), "--resume", "--quiet"])
    assert "does not fit this run's model" in err


def test_resume_refuses_another_config(capsys, tmp_path, trained):
    (tmp_path / "other.yaml").write_text("lr: 0.5\n")
    err = one_line_error(capsys, ["train", "--out", str(trained), "--resume", "--config",
                                  str(tmp_path / "other.yaml")])
    assert "--config cannot change it" in err


def test_bench_json_folder_is_checked_before_benchmarking(capsys, monkeypatch):
    def must_not_run(*args, **kwargs):
        raise AssertionError("benchmarked before checking --json")

    monkeypatch.setattr("batchscale.bench.bench_train", must_not_run)
    err = one_line_error(capsys, ["bench", "--json", "/no/such/folder/x.json", *TINY[:4]])
    assert "/no/such/folder" in err


def _png(size: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("test_class, size, message", [
    ("gamma", 32, "have no training images"),  # a test class the training split lacks
    ("alpha", 64, "must be 32x32"),            # a 64x64 image
])
def test_bad_image_zips_are_one_line(capsys, tmp_path, test_class, size, message):
    path = tmp_path / "images.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for cls in ("alpha", "beta"):
            for i in range(4):
                archive.writestr(f"train/{cls}/{i}.png", _png(32))
        archive.writestr(f"test/{test_class}/0.png", _png(size))
        archive.writestr("test/beta/0.png", _png(32))
    err = one_line_error(capsys, ["train", "--out", str(tmp_path / "r"), "--dataset", str(path),
                                  "--width", "4", "--batch-size", "4", "--quiet"])
    assert message in err
    assert not (tmp_path / "r").exists()


def test_help_has_examples_presets_and_every_analyze_option_explained(capsys):
    parser = build_parser()
    assert "examples:" in parser.format_help() and "batchscale study demo" in parser.format_help()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert "table3" in commands["study"].format_help()
    kinds = next(a for a in commands["analyze"]._actions if a.dest == "analysis").choices
    for kind, sub in kinds.items():
        for action in sub._actions:
            assert action.help, f"analyze {kind} {action.option_strings or action.dest}"


# ---------------------------------------------------------------------- the first hour
def test_a_large_cpu_run_says_its_scale_and_estimates_its_time(tmp_path, capsys):
    cfg = tiny_config(width=32, epochs=50, batch_size=8, base_batch_size=8, device="cpu")
    summary = train(cfg, tmp_path / "run", stop_at_step=RunScale.ESTIMATE_AFTER + 1)
    assert summary["status"] == "interrupted"
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "loading data: sample ..."
    steps = 50 * (256 // 8)
    assert f"this run is {steps:,} steps (50 epochs x 32 steps of 8 images)" in out
    estimate = [ln for ln in lines if ln.startswith("estimate after 20 steps:")]
    assert len(estimate) == 1 and "--width 16 --epochs 20" in estimate[0]
    assert not RunScale.wanted(type("S", (), {"cfg": tiny_config(), "rank": 0,
                                              "device": torch.device("cpu")})(), False)
