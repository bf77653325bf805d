"""The slurm launcher against a real single-node SLURM cluster: submission, reruns, preemption,
requeue, a cancelled pending task, parallelism per study, --status from the study's plan,
refused submissions, and a cluster without accounting.

    scripts/local_slurm.sh up                  # as root: munged, MariaDB, slurmdbd, slurmctld
    .venv/bin/python -m pytest tests/test_slurm.py
    scripts/local_slurm.sh down

Without root or a cluster these tests skip with the reason; with CI set they fail instead.
Studies are submitted at once by a module fixture (the node's 2 CPUs run two one-thread jobs at
a time) and each test follows its own. Local reference runs train meanwhile.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from batchscale.cli import main
from batchscale.engine import rundir
from batchscale.study import jobs, launchers
from batchscale.study.expand import Run

from conftest import ROOT, tiny_config

pytestmark = pytest.mark.slurm

CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")
SCRIPT = ROOT / "scripts" / "local_slurm.sh"
DEFAULT_CONF = Path(os.environ.get("BATCHSCALE_SLURM_DIR", "/tmp/batchscale-slurm")) / "etc" / \
    "slurm.conf"
TIMING = ("wall_s", "images_per_sec")
TIMEOUT_S = 600  # a guard against a hang, not a timing: runs take seconds
# the CPU study: demo's 4 distinct runs at seed 0, tiny, one thread each
STUDY = ["study", "demo", "--seeds", "1", "--set", "width=4", "--set", "train_subset=128",
         "--set", "epochs=2", "--set", "threads=1"]


# ---------------------------------------------------------------------- the cluster
@functools.cache
def cluster_problem() -> str | None:
    """Why the tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (the local cluster's only SLURM user; scripts/local_slurm.sh up)"
    if launchers.submitit is None:
        return "the slurm extra (submitit) is not installed"
    conf = os.environ.get("SLURM_CONF") or next(
        (str(c) for c in (DEFAULT_CONF, Path("/etc/slurm/slurm.conf")) if c.exists()), "")
    if not Path(conf).is_file():
        return (f"no SLURM cluster configured ({conf or DEFAULT_CONF} absent); start one: "
                "scripts/local_slurm.sh up")
    os.environ["SLURM_CONF"] = conf
    try:
        done = subprocess.run(["sinfo", "--noheader", "--format", "%T"], capture_output=True,
                              text=True, timeout=15)
    except (OSError, subprocess.SubprocessError) as err:
        return f"no SLURM here ({err}); start one: scripts/local_slurm.sh up"
    if done.returncode or not set(done.stdout.split()) & {"idle", "mixed", "allocated"}:
        return (f"no SLURM cluster up (sinfo: {(done.stderr or done.stdout).strip()!r}); "
                "start one: scripts/local_slurm.sh up")
    return None


@pytest.fixture(scope="module")
def cluster():
    problem = cluster_problem()
    if problem and CI:
        pytest.fail(f"CI runs the SLURM tests: {problem}")
    if problem:
        pytest.skip(problem)
    return os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")


def cli(*args: str) -> tuple[int, str, str]:
    """`batchscale ARGS` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


def squeue() -> dict[str, str]:
    return jobs.slurm_queue()


def wait_until(predicate, what: str, timeout: float = TIMEOUT_S, poll: float = 0.2):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"waited {timeout:.0f} s for {what}"
        time.sleep(poll)


def without_timing(rows):
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def status_of(out: Path, run: str) -> str | None:
    path = out / run / rundir.SUMMARY
    return rundir.read_json(path).get("status") if path.exists() else None


def logs(out: Path) -> str:
    return "".join(p.read_text() for p in sorted((out / "slurm").glob("*_log.out")))


# ---------------------------------------------------------------------- the studies
PREEMPTIONS = {"usr2": ["scancel", "--signal=USR2"], "requeue": ["scontrol", "requeue"]}


class Preempter(threading.Thread):
    """Signals each preempted study's job as soon as its run has finished epoch 1 (its
    checkpoint saved), whichever test runs meanwhile; records (rows, status) at that moment."""

    def __init__(self, studies: dict[str, Path], run: Run):
        super().__init__(daemon=True)
        self.studies, self.train_run = studies, run
        self.signalled, self.error, self.stop = {}, None, False

    def run(self) -> None:
        try:
            deadline = time.time() + TIMEOUT_S
            while len(self.signalled) < len(self.studies) and not self.stop:
                assert time.time() < deadline, "no first epoch in time"
                for name, out in self.studies.items():
                    directory = out / self.train_run.directory
                    rows = len(rundir.read_metrics(directory))
                    if (name not in self.signalled and rows >= 1
                            and (directory / "checkpoint.pt").exists()):
                        job_id = jobs.read_jobs(out)[self.train_run.directory]["job_id"]
                        self.signalled[name] = (rows, status_of(out, self.train_run.directory))
                        subprocess.run([*PREEMPTIONS[name], job_id], check=True,
                                       capture_output=True, timeout=60)
                time.sleep(0.05)
        except Exception as err:  # reported by the tests
            self.error = repr(err)


def preempt_run() -> Run:
    """Long enough (8 steps x 4 epochs) that a signal after epoch 1 lands mid-run."""
    cfg = tiny_config(train_subset=256, batch_size=32, base_batch_size=32, epochs=4, threads=1,
                      log_every=1)
    return Run("p", 32, 3, cfg, "p/b32/seed3")


@pytest.fixture(scope="module")
def studies(cluster, tmp_path_factory):
    """Everything submitted at once: the CPU study through the command line (parallelism 1),
    two one-run studies to preempt, and the local references training meanwhile."""
    root = tmp_path_factory.mktemp("slurm")
    study = root / "study"
    code, stdout, stderr = cli(*STUDY, "--out", str(study), "--launcher", "slurm",
                               "--slurm-partition", "cpu", "--slurm-array-parallelism", "1")
    assert code == 0, stderr
    run = preempt_run()
    preempted = {}
    for name in PREEMPTIONS:
        out = root / name
        executor = launchers.slurm_executor(out, "cpu", 30, 0, 1,
                                            cpus=launchers.run_cpus(run, 0))
        launchers.submit([run], out, executor, gpus=0)
        preempted[name] = out
    watcher = Preempter(preempted, run)
    watcher.start()
    local = root / "local"
    references = [  # a local study like `study`, and the preempted run uninterrupted
        subprocess.Popen([sys.executable, "-m", "batchscale", *STUDY, "--out", str(local),
                          "--no-report"], cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True),
        subprocess.Popen(launchers.train_job(run, root / "reference", 0).command(), cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)]
    yield {"study": study, "submitted": stdout, "preempted": preempted, "run": run,
           "local": local, "reference": root / "reference", "references": references,
           "watcher": watcher}
    watcher.stop = True
    for process in references:
        if process.poll() is None:
            process.terminate()
            process.wait()
    leftover = [j for out in [study, *preempted.values()]
                for j in jobs.read_jobs(out).values()
                if squeue().get(j["job_id"], jobs.ENDED) in jobs.ACTIVE_STATES]
    if leftover:
        subprocess.run(["scancel", *[j["job_id"] for j in leftover]], check=False)


def references_done(studies) -> None:
    for process in studies["references"]:
        if process.returncode is None:
            _, stderr = process.communicate(timeout=TIMEOUT_S)
            assert process.returncode == 0, stderr


def study_jobs(out: Path) -> list[str]:
    """Every job id the study ever had, earlier ones included."""
    records = jobs.read_jobs(out).values()
    return [j for r in records for j in [r["job_id"], *r.get("earlier_jobs", [])]]


# ---------------------------------------------------------------------- a CPU study
def test_cpu_study_is_submitted_without_gres_and_with_its_threads(studies):
    study = studies["study"]
    assert "runs: 4 submitted" in studies["submitted"]
    script = next((study / "slurm").glob("*_submission.sh")).read_text()
    assert "--cpus-per-task=1" in script and "--array=0-3%1" in script
    assert "gres" not in script and "gpus" not in script
    assert "#SBATCH --partition=cpu" in script
    hint = studies["submitted"].strip().splitlines()[-1]
    assert hint == ("follow with: batchscale study demo --out " + shlex.quote(str(study)) +
                    " --set width=4 --set train_subset=128 --set epochs=2 --set threads=1 "
                    "--seeds 1 --status")


def test_rerun_while_running_submits_nothing_and_labels_running_jobs(studies):
    study = studies["study"]
    before = jobs.read_jobs(study)
    wait_until(lambda: "RUNNING" in {squeue().get(r["job_id"]) for r in before.values()},
               "a job of the study to run")
    code, stdout, stderr = cli(*STUDY, "--out", str(study), "--launcher", "slurm")
    assert code == 0, stderr
    assert jobs.read_jobs(study) == before  # nothing submitted again
    lines = stdout.splitlines()
    running = [ln for ln in lines if ": running (job " in ln]
    queued = [ln for ln in lines if ": queued (job " in ln]
    counts = dict(reversed(part.split()) for part in
                  next(ln for ln in lines if ln.startswith("runs: "))[6:].split(", "))
    assert counts.get("running", "0") == str(len(running)) and running, stdout
    assert counts.get("queued", "0") == str(len(queued))
    assert len(running) + len(queued) + int(counts.get("skipped", 0)) == 4
    states = squeue()
    for line in running:
        assert states.get(line.split("(job ")[1].rstrip(")")) in ("RUNNING", "COMPLETING")


def test_status_reads_the_study_folders_plan(studies):
    """--status without the --set/--seeds that made the study shows the study's own runs
    (demo alone would give 8 runs of 4 epochs)."""
    study = studies["study"]
    code, with_options, _ = cli(*STUDY, "--out", str(study), "--status")
    assert code == 0
    code, plain, _ = cli("study", "demo", "--out", str(study), "--status")
    assert code == 0
    code, no_preset, _ = cli("study", "--out", str(study), "--status")
    assert code == 0
    rows = plain.strip().splitlines()[1:]
    assert len(rows) == 4 and all("seed0" in row for row in rows)
    assert not any("/4" in row for row in rows)  # epochs 2, not demo's 4
    # the three agree but for a run that changed state between the calls
    assert [r.split()[0] for r in rows] == [r.split()[0] for r in
                                            with_options.strip().splitlines()[1:]]
    assert [r.split()[0] for r in rows] == [r.split()[0] for r in
                                            no_preset.strip().splitlines()[1:]]
    code, _, stderr = cli("study", "mini", "--out", str(study), "--status")
    assert code == 2 and "holds a study of preset demo, not mini" in stderr


def test_a_task_cancelled_while_pending_is_seen_and_resubmitted_behind_the_array(studies):
    """sacct has no row for an array task cancelled while pending: squeue decides. The rerun
    resubmits it at once, as a job that waits for the study's array (parallelism 1 holds)."""
    study = studies["study"]
    records = jobs.read_jobs(study)
    name, record = list(records.items())[-1]  # the array's last task: pending behind %1
    assert squeue().get(record["job_id"]) == "PENDING", squeue()
    subprocess.run(["scancel", record["job_id"]], check=True)
    wait_until(lambda: squeue().get(record["job_id"], jobs.ENDED) not in
               jobs.ACTIVE_STATES, "the cancelled task to leave the queue")
    code, table, _ = cli("study", "demo", "--out", str(study), "--status")
    row = next(ln for ln in table.splitlines() if ln.startswith(name))
    assert "queued" not in row and "not started" in row, table
    code, stdout, stderr = cli(*STUDY, "--out", str(study), "--launcher", "slurm",
                               "--gpus-per-run", "0")
    assert code == 0, stderr
    assert f"{name}: submitted (job " in stdout and "1 submitted" in stdout
    new = jobs.read_jobs(study)[name]
    assert new["earlier_jobs"] == [record["job_id"]] and new["job_id"] != record["job_id"]
    assert new["array_parallelism"] == 1  # the study's, though this rerun did not give it
    array = record["job_id"].split("_")[0]
    script = (study / "slurm" / f"{new['job_id']}_submission.sh").read_text()
    assert f"#SBATCH --dependency=afterany:{array}" in script
    assert "#SBATCH --array" not in script  # one run: one job
    assert "gpus" not in script and "gres" not in script  # --gpus-per-run 0


def test_parallelism_holds_for_the_study_and_it_completes_like_a_local_study(studies):
    study = studies["study"]
    job_ids = study_jobs(study)
    most = 0

    def finished() -> bool:
        nonlocal most
        states = squeue()
        most = max(most, sum(states.get(j) == "RUNNING" for j in job_ids))
        return not any(states.get(j, jobs.ENDED) in jobs.ACTIVE_STATES for j in job_ids)

    wait_until(finished, "the study's jobs to end", poll=0.1)
    assert most == 1  # --slurm-array-parallelism 1, across the two submissions
    references_done(studies)
    runs = [r for r in jobs.read_jobs(study)]
    assert len(runs) == 4
    for run in runs:
        assert status_of(study, run) == "completed", logs(study)
        assert without_timing(rundir.read_metrics(study / run)) == without_timing(
            rundir.read_metrics(studies["local"] / run))
        summary = rundir.read_json(study / run / rundir.SUMMARY)
        assert summary["environment"]["threads"] == 1
    log = next((study / "slurm").glob("*_0_0_log.out"))  # <array>_<task>_0_log.out
    command = next(ln for ln in log.read_text().splitlines() if "batchscale job:" in ln)
    assert command.split().count("--threads") == 1 and command.endswith("--threads 1")
    # after completion: a rerun skips every run, --wait reports at once
    before = jobs.read_jobs(study)
    code, stdout, stderr = cli(*STUDY, "--out", str(study), "--launcher", "slurm", "--wait")
    assert code == 0, stderr
    assert "runs: 4 skipped" in stdout and "report:" in stdout
    assert jobs.read_jobs(study) == before


# ---------------------------------------------------------------------- preemption
def preempted_like_the_reference(studies, name: str) -> Path:
    """The job was signalled after the run's first epoch, mid-run; the run completed,
    resumed in the same (requeued) job, with the metrics of the uninterrupted run."""
    out, run = studies["preempted"][name], studies["run"]
    watcher = studies["watcher"]
    wait_until(lambda: name in watcher.signalled or watcher.error, f"{name}: the signal")
    assert watcher.error is None, watcher.error
    rows, status = watcher.signalled[name]
    assert rows >= 1 and status is None  # signalled after epoch 1, before the end
    job_id = jobs.read_jobs(out)[run.directory]["job_id"]
    wait_until(lambda: status_of(out, run.directory) == "completed" and
               squeue().get(job_id, jobs.ENDED) not in jobs.ACTIVE_STATES,
               f"{name}: the run to complete")
    assert jobs.read_jobs(out)[run.directory]["job_id"] == job_id  # requeued, same job
    log = logs(out)
    commands = [ln for ln in log.splitlines() if ln.startswith("batchscale job: ")
                and " train --out " in ln]
    assert len(commands) == 2 and "--resume" in commands[1], log
    references_done(studies)
    assert without_timing(rundir.read_metrics(out / run.directory)) == without_timing(
        rundir.read_metrics(studies["reference"] / run.directory))
    return out


def test_preemption_by_usr2_checkpoints_requeues_and_resumes_exactly(studies):
    """SLURM's warning signal (scancel --signal=USR2, as before preemption or the time
    limit): submitit checkpoints the run and requeues the job."""
    out = preempted_like_the_reference(studies, "usr2")
    assert "stopped for requeue; checkpoint" in logs(out)


def test_scontrol_requeue_resumes_exactly(studies):
    """SLURM kills the job (SIGTERM: the run saves a checkpoint) and requeues it."""
    preempted_like_the_reference(studies, "requeue")


# ---------------------------------------------------------------------- refusals
def test_a_refused_submission_is_one_line_and_leaves_nothing(cluster, tmp_path):
    out = tmp_path / "gpu"
    code, _, stderr = cli(*STUDY, "--out", str(out), "--launcher", "slurm",
                          "--slurm-partition", "cpu", "--gpus-per-run", "1")
    assert code == 2
    (line,) = stderr.strip().splitlines()
    assert line.startswith("batchscale: error: sbatch refused the jobs: ") and "gres" in line
    assert not out.exists()
    out.mkdir()  # an existing folder keeps what it had, and gets nothing
    (out / "notes.txt").write_text("mine")
    code, _, stderr = cli(*STUDY, "--out", str(out), "--launcher", "slurm",
                          "--slurm-partition", "nosuch")
    assert code == 2
    assert stderr.strip().splitlines() == [
        "batchscale: error: sbatch refused the jobs: invalid partition specified: nosuch"]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_a_group_writable_study_folder_is_refused(cluster, tmp_path):
    out = tmp_path / "shared"
    out.mkdir()
    out.chmod(0o775)
    code, _, stderr = cli(*STUDY, "--out", str(out), "--launcher", "slurm")
    assert code == 2
    (line,) = stderr.strip().splitlines()
    assert "group- or world-writable (mode 775)" in line and "chmod go-w" in line
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("text, problem", [
    ('{"r/b16/seed0": {"job_id": "12', "is not valid JSON"),
    ('{"r/b16/seed0": {"job_id": "12; rm -rf ~", "executor": "slurm", "folder": "x", '
     '"submitted": 1}}', "has job_id '12; rm -rf ~', not a job id"),
    ('{"r/b16/seed0": {"job_id": "12_3", "executor": "local", "folder": "x", '
     '"submitted": 1}}', "has job_id '12_3', not a process id"),
    ('["12"]', "must hold an object")])
def test_a_damaged_jobs_file_is_one_line(tmp_path, text, problem):
    out = tmp_path / "study"
    out.mkdir()
    (out / "jobs.json").write_text(text)
    run = Run("r", 16, 0, tiny_config(), "r/b16/seed0")
    with pytest.raises(launchers.UserError, match=problem) as caught:
        jobs.status_table([run], out)
    assert "\n" not in str(caught.value)


# ---------------------------------------------------------------------- no accounting
@pytest.fixture
def without_accounting(cluster):
    """The cluster restarted with AccountingStorageType=accounting_storage/none, and back."""
    conf = Path(cluster)
    if not conf.read_text().startswith("# written by scripts/local_slurm.sh"):
        problem = f"{conf} is not scripts/local_slurm.sh's cluster: it cannot be restarted"
        pytest.fail(problem) if CI else pytest.skip(problem)
    env = {**os.environ, "BATCHSCALE_SLURM_DIR": str(conf.parent.parent)}
    subprocess.run([str(SCRIPT), "up", "--no-accounting"], check=True, env=env,
                   capture_output=True, timeout=TIMEOUT_S)
    try:
        yield
    finally:
        subprocess.run([str(SCRIPT), "up"], check=True, env=env, capture_output=True,
                       timeout=TIMEOUT_S)


def test_without_accounting_states_come_from_squeue_and_nothing_is_submitted_twice(
        without_accounting, tmp_path):
    sacct = subprocess.run(["sacct", "--noheader"], capture_output=True, text=True)
    assert sacct.returncode != 0 and "accounting storage is disabled" in sacct.stderr.lower()
    runs = [Run("r", 32, seed, tiny_config(train_subset=128, batch_size=32, epochs=2, threads=1),
                f"r/b32/seed{seed}") for seed in (0, 1)]
    out = tmp_path / "study"
    executor = launchers.slurm_executor(out, "cpu", 30, 0, 1, cpus=1)
    first = launchers.submit(runs, out, executor, gpus=0)
    assert first["submitted"] == [r.directory for r in runs]
    records = jobs.read_jobs(out)
    table = jobs.status_table(runs, out)
    assert "queued" in table  # parallelism 1: the second waits
    again = launchers.submit(runs, out, launchers.slurm_executor(out, "cpu", 30, 0, 1, cpus=1),
                             gpus=0)
    assert "jobs" not in again and len(again["running"]) + len(again["queued"]) == 2
    assert jobs.read_jobs(out) == records
    job_ids = [r["job_id"] for r in records.values()]
    wait_until(lambda: not any(squeue().get(j, jobs.ENDED) in jobs.ACTIVE_STATES
                               for j in job_ids), "the jobs to end")
    table = jobs.status_table(runs, out)
    assert table.count("completed (test acc") == 2, table
    last = launchers.submit(runs, out, launchers.slurm_executor(out, "cpu", 30, 0, 1, cpus=1),
                            gpus=0)
    assert last["skipped"] == [r.directory for r in runs] and "jobs" not in last
    assert json.loads((out / "jobs.json").read_text()) == records
