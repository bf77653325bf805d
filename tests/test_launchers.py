"""The slurm launcher, end to end on submitit's local executor (real jobs as subprocesses), and
the sbatch script it would submit to SLURM.

    .venv/bin/python -m pytest tests/test_launchers.py
"""

import os
import signal
import subprocess
import sys
import time

import pytest

from batchscale.engine import rundir
from batchscale.engine.train import PAUSE_ENV
from batchscale.study.expand import Run
from batchscale.study.jobs import read_jobs, status_table
from batchscale.study.launchers import sbatch_script, submit, train_job

from conftest import PATIENCE_S, ROOT, tiny_config

submitit = pytest.importorskip("submitit", reason="the slurm extra is not installed")

TIMING = ("wall_s", "images_per_sec")


def tiny_run(name="r/b16/seed0", epochs=2):
    cfg = tiny_config(train_subset=128, batch_size=16, epochs=epochs, threads=1, log_every=1)
    return Run("r", 16, 0, cfg, name)


def executor(out):
    ex = submitit.LocalExecutor(folder=str(out / "slurm"))
    ex.update_parameters(timeout_min=10, signal_delay_s=1)
    return ex


def without_timing(rows):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def descendants(pid: int) -> list[int]:
    path = f"/proc/{pid}/task/{pid}/children"
    children = [int(c) for c in open(path).read().split()] if os.path.exists(path) else []
    return children + [d for c in children for d in descendants(c)]


def wait_for_epochs(run_dir, count, job, timeout=PATIENCE_S):
    deadline = time.time() + timeout
    while len(rundir.read_metrics(run_dir)) < count:
        assert job.state == "RUNNING" and time.time() < deadline, job.state
        time.sleep(0.05)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A study of one tiny run, submitted and waited for."""
    out = tmp_path_factory.mktemp("study")
    run = tiny_run()
    outcome = submit([run], out, executor(out))
    for job in outcome["jobs"]:
        assert job.result()["status"] == "completed"
    return out, run, outcome


def test_submitted_runs_complete_and_are_skipped_on_rerun(finished):
    out, run, outcome = finished
    assert outcome["submitted"] == [run.directory]
    record = read_jobs(out)[run.directory]
    assert record["executor"] == "local" and record["resume"] is False
    assert len(rundir.read_metrics(out / run.directory)) == 2
    table = status_table([run], out)
    assert "completed (test acc" in table and record["job_id"] in table
    again = submit([run], out, executor(out))
    assert again["skipped"] == [run.directory] and "jobs" not in again
    assert read_jobs(out)[run.directory]["job_id"] == record["job_id"]


def test_preempted_job_checkpoints_requeues_and_resumes_exactly(finished, tmp_path,
                                                                monkeypatch):
    """USR2 (SLURM's warning before preemption or the time limit) mid-run: submitit calls the
    job's checkpoint(), the run saves at its current step, the job is requeued and finishes
    with the metrics of the uninterrupted run. The run waits after epoch 1 (PAUSE_ENV) until
    the signal comes, so the signal always finds it mid-run; it stops after epoch 2's first
    step. The requeued job resumes inside epoch 2 and does not wait again."""
    monkeypatch.setenv(PAUSE_ENV, "1")
    run = tiny_run(epochs=2)
    (job,) = submit([run], tmp_path, executor(tmp_path))["jobs"]
    wait_for_epochs(tmp_path / run.directory, 1, job)
    task = descendants(int(job.job_id))[0]  # the submitit process running TrainJob
    os.kill(task, signal.SIGUSR2)
    assert job.result()["status"] == "completed"
    log = "".join(p.read_text() for p in (tmp_path / "slurm").glob("*_log.*"))
    assert "stopped for requeue; checkpoint" in log and "--resume" in log
    assert "saved" in log.split("stopped for requeue; checkpoint", 1)[1].splitlines()[0]
    reference = rundir.read_metrics(finished[0] / run.directory)
    assert without_timing(rundir.read_metrics(tmp_path / run.directory)) == without_timing(
        reference)


def test_killed_job_is_resumed_not_restarted_on_rerun(finished, tmp_path, monkeypatch):
    """SIGKILL while the run waits after epoch 1's checkpoint (PAUSE_ENV: it cannot have gone
    on); the rerun resumes from that checkpoint and does not wait again."""
    monkeypatch.setenv(PAUSE_ENV, "1")
    run = tiny_run(epochs=2)
    (job,) = submit([run], tmp_path, executor(tmp_path))["jobs"]
    run_dir = tmp_path / run.directory
    wait_for_epochs(run_dir, 1, job)
    while not (run_dir / "checkpoint.pt").exists():  # the row is written just before it
        assert job.state == "RUNNING", job.state
        time.sleep(0.02)
    for pid in [int(job.job_id), *descendants(int(job.job_id))]:
        os.kill(pid, signal.SIGKILL)
    job._process.wait()
    first = rundir.read_metrics(run_dir)[0]
    assert "running" not in status_table([run], tmp_path)
    again = submit([run], tmp_path, executor(tmp_path))
    assert again["resumed"] == [run.directory]
    assert again["jobs"][0].result()["status"] == "completed"
    rows = rundir.read_metrics(run_dir)
    assert rows[0] == first  # its wall_s too: epoch 1 was not trained again
    assert without_timing(rows) == without_timing(rundir.read_metrics(finished[0] /
                                                                      run.directory))
    assert read_jobs(tmp_path)[run.directory]["earlier_jobs"] == [job.job_id]


def test_sbatch_script_of_a_four_gpu_run(tmp_path, monkeypatch):
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # no srun
    ex = submitit.SlurmExecutor(folder=str(tmp_path / "slurm"))
    ex.update_parameters(partition="gpu", time=720, gpus_per_node=4, ntasks_per_node=1,
                         nodes=1, additional_parameters={"account": "proj"})
    run = tiny_run()
    script = sbatch_script(ex, [train_job(run, tmp_path, 4)])
    assert "#SBATCH --partition=gpu" in script
    assert "#SBATCH --time=720" in script
    assert "#SBATCH --gpus-per-node=4" in script
    assert "#SBATCH --ntasks-per-node=1" in script
    assert "#SBATCH --account=proj" in script
    assert "#SBATCH --signal=USR2@90" in script
    assert "-m submitit.core._submit" in script
    line = next(ln for ln in script.splitlines() if ln.startswith("# task 0:"))
    assert ("-m torch.distributed.run --standalone --nnodes 1 --nproc-per-node 4 -m batchscale "
            f"train --out {tmp_path / run.directory} --quiet") in line
    assert "--batch-size 16" in line and "--overwrite" in line


def test_without_submitit_the_launcher_is_one_line_and_exit_2(tmp_path):
    code = ("import sys; sys.modules['submitit'] = None; "
            "from batchscale.cli import main; sys.exit(main(sys.argv[1:]))")
    done = subprocess.run([sys.executable, "-c", code, "study", "demo", "--launcher", "slurm",
                           "--out", str(tmp_path / "s")], capture_output=True, text=True,
                          timeout=PATIENCE_S, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "batchscale: error: --launcher slurm needs the submitit package: "
        "pip install 'batchscale[slurm]' (or pip install submitit)"]
    assert not (tmp_path / "s").exists()


def test_slurm_options_need_the_slurm_launcher(tmp_path, capsys):
    from batchscale.cli import main
    assert main(["study", "demo", "--gpus-per-run", "2", "--out", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "batchscale: error: --gpus-per-run needs --launcher slurm"]
    assert not (tmp_path / "s").exists()  # nothing else happened
