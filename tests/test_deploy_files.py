"""The Dockerfile, docker-compose.yml and the AWS template agree with the code.

No Docker engine runs here, so the images cannot be built in CI; these tests
check what can go stale without one: every command they run exists, every
variable they set is a setting the app reads, every path they copy or import
exists, and cfn-lint finds no error in the template.
"""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from cli.main import build_parser
from jobs.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
APP_SERVICES = ("migrate", "api", "worker", "reconciler")


def setting_names() -> set[str]:
    """Every environment variable Settings reads."""
    prefix = Settings.model_config.get("env_prefix", "")
    names: set[str] = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        choices = getattr(alias, "choices", None)
        if choices:
            names.update(str(c) for c in choices)
        else:
            names.add(f"{prefix}{name}".upper())
    return names


def assert_cli_command(argv: list[str]) -> None:
    assert argv[0] == "conveyor", f"not a conveyor command: {argv}"
    try:
        build_parser().parse_args(argv[1:])
    except SystemExit as exc:  # argparse refuses unknown commands and options this way
        raise AssertionError(f"`{' '.join(argv)}` is not a valid conveyor command") from exc


def assert_handler(path: str) -> None:
    module, _, attr = path.rpartition(".")
    assert callable(getattr(importlib.import_module(module), attr)), f"{path} is not callable"


# --- Dockerfile --------------------------------------------------------------------------------


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def docker_targets() -> set[str]:
    return set(re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", dockerfile(), re.MULTILINE | re.IGNORECASE))


def exec_form(instruction: str) -> list[list[str]]:
    """The JSON (exec) forms of every ``instruction`` line, e.g. CMD [...]."""
    import json

    return [
        json.loads(m) for m in re.findall(rf"^\s*{instruction}\s+(\[.*\])\s*$", dockerfile(), re.MULTILINE)
    ]


def test_dockerfile_has_the_three_targets_and_runs_as_non_root():
    assert {"build", "runtime", "api", "worker", "lambda"} <= docker_targets()
    assert re.search(r"^USER\s+conveyor$", dockerfile(), re.MULTILINE)


def test_dockerfile_commands_exist():
    commands = exec_form("CMD")
    conveyor_commands = [c for c in commands if c[0] == "conveyor"]
    handlers = [c for c in commands if c[0] != "conveyor" and len(c) == 1]
    assert len(conveyor_commands) >= 2 and handlers
    for argv in conveyor_commands:
        assert_cli_command(argv)
    for (handler,) in handlers:
        assert_handler(handler)
    healthchecks = re.findall(r"CMD\s+(\[.*\])", " ".join(re.findall(r"HEALTHCHECK.*\n.*", dockerfile())))
    assert healthchecks
    import json

    for argv in map(json.loads, healthchecks):
        if argv[0] == "conveyor":
            assert_cli_command(argv)


def test_dockerfile_copies_paths_that_exist():
    for line in re.findall(r"^COPY\s+(?!--from)(.+)$", dockerfile(), re.MULTILINE):
        sources = shlex.split(line)[:-1]
        for source in sources:
            assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
    for package in ("api", "web", "worker", "jobs", "cli", "migrations"):
        assert re.search(rf"^COPY\s+{package}\s", dockerfile(), re.MULTILINE), (
            f"{package} is not in the image"
        )


def test_the_lambda_image_ships_compiled_bytecode_for_every_package_it_copies():
    # Lambda's file system is read-only: a module without a .pyc is compiled on every cold start.
    stage = dockerfile().split(" AS lambda", 1)[1]
    copied = re.findall(r"^COPY\s+(?!--from)(\S+)\s+\$\{LAMBDA_TASK_ROOT\}/", stage, re.MULTILINE)
    compile_step = re.search(r"^RUN python -m compileall (.+?)(?<!\\)$", stage, re.MULTILINE | re.DOTALL)
    assert copied and compile_step, "the lambda stage does not compile its sources"
    for package in copied:
        assert f"${{LAMBDA_TASK_ROOT}}/{package}" in compile_step.group(1), f"{package} is not compiled"


def test_dockerfile_sets_only_known_settings():
    for name in re.findall(r"\b(CONVEYOR_[A-Z_]+)=", dockerfile()):
        assert name in setting_names(), f"Dockerfile sets {name}, which no setting reads"


# --- docker-compose.yml ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "docker-compose.yml").read_text()))


def test_compose_has_the_whole_stack(compose: dict[str, Any]):
    services = compose["services"]
    assert {"redis", "postgres", "migrate", "api", "worker", "reconciler"} <= set(services)
    for name in ("redis", "postgres"):
        assert "healthcheck" in services[name] and services[name].get("volumes"), name
    assert "ports" not in services["worker"], "workers must scale with --scale worker=N"


def test_compose_commands_and_targets_exist(compose: dict[str, Any]):
    for name in APP_SERVICES:
        service = compose["services"][name]
        if "command" in service:
            assert_cli_command(service["command"])
        if "build" in service:
            assert service["build"]["target"] in docker_targets()


def test_compose_sets_only_settings_the_app_reads(compose: dict[str, Any]):
    known = setting_names()
    for name in APP_SERVICES:
        env = compose["services"][name]["environment"]
        unknown = set(env) - known
        assert not unknown, f"{name} sets {unknown}, which no setting reads"
        assert {"DATABASE_URL", "REDIS_URL", "CONVEYOR_SECRET_KEY"} <= set(env)


def test_compose_has_no_fallback_secret(compose: dict[str, Any]):
    """`${VAR:?message}`: compose refuses to start without the secret; `:-` would ship a known one."""
    for name in APP_SERVICES:
        value = str(compose["services"][name]["environment"]["CONVEYOR_SECRET_KEY"])
        assert value.startswith("${CONVEYOR_SECRET_KEY:?"), value
        assert ":-" not in value and "token_urlsafe" in value


def test_compose_waits_for_migrations(compose: dict[str, Any]):
    for name in ("api", "worker", "reconciler"):
        depends = compose["services"][name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"


# --- infra/template.yaml -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    from cfnlint.decode import decode

    parsed, matches = decode(str(ROOT / "infra" / "template.yaml"))
    assert not matches, matches
    return dict(parsed)


def test_cfn_lint_finds_no_error():
    cfn_lint = Path(sys.executable).parent / "cfn-lint"
    done = subprocess.run(
        [str(cfn_lint), str(ROOT / "infra" / "template.yaml")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_template_has_every_part_of_the_stack(template: dict[str, Any]):
    types = {r["Type"] for r in template["Resources"].values()}
    assert {
        "AWS::Serverless::Function",
        "AWS::Serverless::HttpApi",
        "AWS::ECS::Service",
        "AWS::ApplicationAutoScaling::ScalingPolicy",
        "AWS::ElastiCache::ReplicationGroup",
        "AWS::RDS::DBInstance",
        "AWS::SecretsManager::Secret",
        "AWS::EC2::VPC",
    } <= types
    assert "ApiUrl" in template["Outputs"]


def _env_names(template: dict[str, Any]) -> set[str]:
    names = set(template["Globals"]["Function"]["Environment"]["Variables"])
    for resource in template["Resources"].values():
        props = resource.get("Properties", {})
        names |= set(props.get("Environment", {}).get("Variables", {}))
        for container in props.get("ContainerDefinitions", []):
            names |= {e["Name"] for e in container.get("Environment", [])}
            names |= {s["Name"] for s in container.get("Secrets", [])}
    return names


def test_template_sets_only_settings_the_app_reads(template: dict[str, Any]):
    unknown = _env_names(template) - setting_names()
    assert not unknown, f"the template sets {unknown}, which no setting reads"


def test_template_commands_handlers_and_build_targets_exist(template: dict[str, Any]):
    for name, resource in template["Resources"].items():
        props = resource.get("Properties", {})
        if resource["Type"] == "AWS::Serverless::Function":
            assert resource["Metadata"]["DockerBuildTarget"] in docker_targets(), name
            command = props.get("ImageConfig", {}).get("Command")
            if command:
                assert_handler(command[0])
        for container in props.get("ContainerDefinitions", []):
            assert_cli_command(container["Command"])


def test_high_availability_adds_a_redis_replica_with_failover_and_multi_az_postgres(template: dict[str, Any]):
    assert template["Parameters"]["HighAvailability"]["Default"] == "false"
    cache = template["Resources"]["Cache"]["Properties"]
    for prop in ("NumCacheClusters", "AutomaticFailoverEnabled", "MultiAZEnabled"):
        assert list(cache[prop]) == ["Fn::If"] and cache[prop]["Fn::If"][0] == "HighlyAvailable", prop
    assert cache["NumCacheClusters"]["Fn::If"][1:] == [2, 1]
    database = template["Resources"]["Database"]["Properties"]
    assert database["MultiAZ"]["Fn::If"][0] == "MultiAzDatabase"
    assert {"Condition": "HighlyAvailable"} in template["Conditions"]["MultiAzDatabase"]["Fn::Or"]
