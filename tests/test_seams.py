"""The ties between layers are imports or one documented name, never a string nobody checks."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

from jobs.queues import queueing
from worker import main as worker_main

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("api", "web", "worker", "cli")
# A string that names a module of another layer ("worker.runner", "-m cli.main").
NAMES_A_LAYER = re.compile(r"(^|[\s\"'=])(api|web|worker|cli)(\.[a-z_]+)+")
# The documented exceptions: RQ stores the runner's dotted path; the settings' default names the
# example task package (configuration: those modules depend on jobs/ only).
ALLOWED = {("jobs/queues/queueing.py", "worker.runner"), ("jobs/settings.py", "worker.tasks")}


def _ties(path: Path) -> set[tuple[str, str]]:
    """Imports of another layer, and strings (not docstrings) naming one of its modules."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    rel = str(path.relative_to(ROOT))
    ties = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            ties |= {(rel, a.name) for a in node.names if a.name.split(".")[0] in LAYERS}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in LAYERS:
            ties.add((rel, node.module or ""))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            ties |= {(rel, m.group(0).strip(" \"'=")) for m in NAMES_A_LAYER.finditer(node.value)}
    return ties


def test_jobs_names_no_other_layer_except_the_documented_ones():
    found = set().union(*(_ties(path) for path in sorted((ROOT / "jobs").rglob("*.py"))))
    assert found == ALLOWED


def test_web_imports_nothing_of_the_api():
    """The pages read and act through jobs/ as the API does: no arrow runs up from web/ to api/."""
    found = set().union(*(_ties(path) for path in sorted((ROOT / "web").rglob("*.py"))))
    assert {(path, name) for path, name in found if name.split(".")[0] == "api"} == set()


def test_rq_function_paths_resolve_to_the_worker_functions():
    from worker import runner

    for path, func in ((queueing.RUNNER, runner.run_job), (queueing.ON_STOPPED, runner.on_stopped)):
        module, _, name = path.rpartition(".")
        assert getattr(importlib.import_module(module), name) is func


def test_the_recorder_entry_point_is_a_module_with_main():
    module = importlib.import_module(worker_main.RECORDER_ENTRY)
    assert callable(module.main)
    shown = subprocess.run(
        [sys.executable, "-m", worker_main.RECORDER_ENTRY, "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert shown.returncode == 0 and "--name" in shown.stdout


def test_task_modules_load_without_the_worker_runtime():
    """The API imports the task modules to validate payloads: tasks depend on the protocol only."""
    code = (
        "import sys; from jobs.tasks import load_tasks; load_tasks();"
        "leaked = sorted(m for m in sys.modules if m in ('worker.progress', 'worker.runner', 'worker.main'));"
        "print(leaked); sys.exit(1 if leaked else 0)"
    )
    env = {"CONVEYOR_TASK_MODULES": '["worker.tasks", "tests.control_tasks", "tests.history_tasks"]'}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env={**_base_env(), **env}
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_worker_progress_keeps_the_protocol_tasks_use():
    from redis import Redis

    from jobs.clock import utcnow
    from jobs.progress_protocol import ProgressReporter
    from worker.progress import Progress

    progress = Progress(job_id="j", attempt=1, started_at=utcnow(), client=Redis())  # connects lazily
    assert isinstance(progress, ProgressReporter)


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
