"""docker-compose.yml: its services and settings, and its commands run as local processes (the topology).

There is no Docker engine here, so the file is checked as compose reads it (YAML, .env, interpolation), and
the launch, worker and dashboard commands are run exactly as written against the local PostgreSQL."""

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import psycopg2
import pytest

from composefile import (COMPOSE_FILE, DLNN_SERVICES, REPO, MissingVariable, duration_s, example_env,
                         interpolate, load_compose, read_env_file, resolve, service_env)

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SECRET_WORDS = re.compile(r"PASSWORD|SECRET|TOKEN|PASSWD|API_KEY", re.I)


@pytest.fixture(scope="module")
def raw():
    return load_compose()


@pytest.fixture(scope="module")
def compose(raw):
    return resolve(raw, example_env())


def test_interpolation_rules():
    env = {"A": "a", "E": ""}
    assert interpolate("$$A ${A} $A ${B:-b} ${E:-e} ${E-e} ${A:+x} ${B+x}", env) == "$A a a b e  x "
    assert interpolate("${B:-${A}-${C:-c}}", env) == "a-c"
    with pytest.raises(MissingVariable, match="set it"):
        interpolate("${E:?set it}", env)


def test_every_service_and_volume(compose):
    assert set(compose["services"]) == {"postgres", "launch", "worker", "worker-cpu", "dashboard"}
    assert set(compose["volumes"]) == {"pgdata", "artifacts", "gpu-slots"}
    assert compose["name"] == "dlnn-studies"


def test_postgres_is_the_official_image_with_a_volume_and_a_pg_isready_healthcheck(compose):
    pg = compose["services"]["postgres"]
    assert re.fullmatch(r"postgres:\d+(\.\d+)?", pg["image"])
    assert "pgdata:/var/lib/postgresql/data" in pg["volumes"]
    check = pg["healthcheck"]
    assert check["test"][0] == "CMD-SHELL" and "pg_isready" in check["test"][1] and "-h 127.0.0.1" in check["test"][1]
    assert duration_s(check["interval"]) <= 10 and check["retries"] >= 5
    env = service_env(pg)
    assert env["POSTGRES_PASSWORD"] == "test-only-pg" and env["POSTGRES_USER"] == "dlnn"
    assert pg["restart"] == "unless-stopped"


def test_dependency_order(compose):
    services = compose["services"]
    assert services["postgres"].get("depends_on") is None
    assert services["launch"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("worker", "worker-cpu", "dashboard"):
        assert services[name]["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                                "launch": {"condition": "service_completed_successfully"}}
    # A start order exists (no cycle) and it is postgres, launch, then the rest.
    order, left = [], dict(services)
    while left:
        ready = sorted(n for n, s in left.items() if set(s.get("depends_on") or {}) <= set(order))
        assert ready, f"dependency cycle among {sorted(left)}"
        order += ready
        for n in ready:
            del left[n]
    assert order[:2] == ["postgres", "launch"]


def test_gpu_worker_reserves_the_gpus_and_the_cpu_worker_is_a_profile(compose):
    services = compose["services"]
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    # count: all, not 1: every replica must see every GPU to claim its own slot (dlnn_studies/ops/gpu_slot.py).
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert services["worker"]["profiles"] == ["gpu"] and services["worker-cpu"]["profiles"] == ["cpu"]
    assert "deploy" not in services["worker-cpu"]
    assert services["worker-cpu"]["command"] == services["worker"]["command"] + ["--device", "cpu"]
    assert service_env(services["worker"])["WORKERS_PER_GPU"] == "1"
    # Slot locks are file locks on a volume every worker container of the host shares: no database connection.
    assert "gpu-slots:/gpu-slots" in services["worker"]["volumes"]
    assert service_env(services["worker"])["DLNN_GPU_LOCK_DIR"] == "/gpu-slots"
    assert read_env_file()["COMPOSE_PROFILES"] == "gpu"
    for name, service in services.items():
        if name not in ("worker", "worker-cpu"):
            assert "profiles" not in service, f"{name} must start with every profile"


def test_restart_policies_and_the_workers_grace_period(compose):
    services = compose["services"]
    assert services["launch"]["restart"] == "no"
    assert services["dashboard"]["restart"] == "unless-stopped"
    for name in ("worker", "worker-cpu"):
        worker = services[name]
        assert worker["restart"] == "on-failure"  # an exit 0 (budget reached, SIGTERM) is final
        assert worker["stop_signal"] == "SIGTERM" and worker["init"] is True
        assert 60 <= duration_s(worker["stop_grace_period"]) <= 600  # one epoch of a GPU-sized study


def test_ports_are_published_on_loopback_only(raw):
    for env in (example_env(), {"POSTGRES_PASSWORD": "p", "DLNN_DASHBOARD_PASSWORD": "d"}):  # .env, or nothing set
        services = resolve(raw, env)["services"]
        published = {n: s["ports"] for n, s in services.items() if s.get("ports")}
        assert set(published) == {"postgres", "dashboard"}
        for name, ports in published.items():
            for port in ports:
                assert isinstance(port, str) and port.startswith("127.0.0.1:"), f"{name}: {port}"
    dashboard = resolve(raw, example_env())["services"]["dashboard"]
    assert dashboard["ports"] == ["127.0.0.1:8080:8080"]
    cmd = dashboard["command"]
    assert cmd[:2] == ["dlnn", "dashboard"] and cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert cmd[cmd.index("--port") + 1] == "8080"
    assert service_env(dashboard)["DLNN_DASHBOARD_PASSWORD"] == "test-only-dash"


def _walk(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, path + (str(k),))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, path + (str(i),))
    else:
        yield path, node


def test_no_literal_secret(raw):
    for path, value in _walk(raw):
        if SECRET_WORDS.search(path[-1]):
            assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", str(value)), f"{'.'.join(path)} must be ${{VAR:?...}} from .env"
    for path, value in _walk(resolve(raw, example_env())):
        assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", str(value)), f"{'.'.join(path)}: password in a URL"
    # Without a .env (passwords empty, as in .env.example) compose refuses to start.
    with pytest.raises(MissingVariable, match="POSTGRES_PASSWORD is not set"):
        resolve(raw, read_env_file())
    example = read_env_file()
    assert all(v == "" for k, v in example.items() if SECRET_WORDS.search(k))
    assert ".env" in (REPO / ".dockerignore").read_text().split()


def test_dlnn_services_share_one_image_built_from_the_dockerfile(compose):
    services = compose["services"]
    for name in DLNN_SERVICES:
        s = services[name]
        assert s["image"] == "dlnn-studies:latest" and s["build"]["dockerfile"] == "deploy/Dockerfile"
        assert s["build"]["context"] == "." and s["cap_drop"] == ["ALL"]
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", dockerfile, re.M).group(1)
    assert services["worker"]["build"]["args"]["BASE_IMAGE"] == base == read_env_file()["DLNN_BASE_IMAGE"]
    torch_pin = re.search(r"^torch==(\S+)$", (REPO / "requirements.txt").read_text(), re.M).group(1)
    assert base.startswith(f"pytorch/pytorch:{torch_pin}-cuda") and "FROM ${BASE_IMAGE}" in dockerfile
    assert "pip install -r requirements.txt" in dockerfile
    users = re.findall(r"^USER (\S+)$", dockerfile, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    for line in re.findall(r"^(?:ENV|ARG) .*$", dockerfile, re.M):
        assert not SECRET_WORDS.search(line), line


def test_artifacts_are_on_one_shared_volume(compose):
    for name in DLNN_SERVICES:
        s = compose["services"][name]
        assert "artifacts:/data" in s["volumes"]
        env = service_env(s)
        assert env["DLNN_ARTIFACTS"].startswith("/data/") and env["DLNN_STORAGE"].startswith("postgresql+psycopg2://")
        assert "@postgres:5432/" in env["DLNN_STORAGE"] and env["PGPASSWORD"] == "test-only-pg"


def _docker_compose_works() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _docker_compose_works(), reason="no `docker compose` plugin on this machine")
def test_docker_compose_config_accepts_the_file(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in example_env().items()))
    out = subprocess.run(["docker", "compose", "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config", "--format", "json"],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert set(json.loads(out.stdout)["services"]) >= {"postgres", "launch", "worker", "dashboard"}


def test_launch_entrypoint_resolves_spec_names_and_paths(tmp_path):
    from dlnn_studies.cli.ops import spec_paths

    (tmp_path / "a.toml").write_text("")
    (tmp_path / "b.toml").write_text("")
    assert spec_paths("", tmp_path) == [tmp_path / "a.toml", tmp_path / "b.toml"]  # empty: every spec
    assert spec_paths("b, a", tmp_path) == [tmp_path / "b.toml", tmp_path / "a.toml"]
    assert spec_paths(str(tmp_path / "a.toml"), tmp_path) == [tmp_path / "a.toml"]
    with pytest.raises(ValueError, match=r"no spec file .*c\.toml; known in .*: a, b"):
        spec_paths("a c", tmp_path)
    with pytest.raises(ValueError, match="holds no"):
        spec_paths(None, tmp_path / "empty")


def test_wait_entrypoint_waits_for_the_schema_and_the_study():
    import optuna

    from dlnn_studies.cli.ops import storage_state, wait_for

    db = f"dlnn_wait_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(ADMIN_URL)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{db}"')
    url = f"postgresql+psycopg2://postgres@127.0.0.1:5432/{db}"
    try:
        assert "no schema" in storage_state(url)
        assert wait_for(url, timeout_s=0.2, poll_s=0.1) == 1
        optuna.create_study(study_name="s", storage=url)
        assert storage_state(url) is None and storage_state(url, "other") == "no study 'other' yet"
        assert wait_for(url, "s", timeout_s=5) == 0
        assert "dlnn_nosuch_db" in storage_state(url.replace(db, "dlnn_nosuch_db"))
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()


# ---------------------------------------------------------------------------------------------------------
# The topology: the compose commands, run as local processes against the local PostgreSQL.

TINY_SPEC = REPO / "tests" / "data" / "topology.toml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Topology:
    """Runs compose services as processes: container paths map to the repo (/app) and temp dirs (volumes)."""

    def __init__(self, compose: dict, tmp: Path):
        self.compose, self.tmp, self.procs = compose, tmp, []
        self.container_port, self.host_port = 8080, _free_port()

    def local(self, text: str) -> str:
        for volume in ("/data", "/gpu-slots"):
            text = re.sub(rf"(?<![\w/]){volume}(?=/|$)", str(self.tmp / volume.strip("/")), text)
        return re.sub(r"(?<![\w/])/app(?=/|$)", str(REPO), text)

    def argv_env(self, name: str, extra: dict | None = None):
        service = self.compose["services"][name]
        argv = [self.local(a) for a in service["command"]]
        if name == "dashboard":  # one network for all processes: publish the container port on a free port
            argv[argv.index("--port") + 1] = str(self.host_port)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("DLNN_", "PG", "CUDA_", "WORKERS_PER_GPU"))}
        base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', '')}"
        env = {**base, **{k: self.local(v) for k, v in service_env(service).items()}, **(extra or {})}
        return argv, env

    def start(self, name: str, extra: dict | None = None, tag: str | None = None) -> subprocess.Popen:
        argv, env = self.argv_env(name, extra)
        log = open(self.tmp / f"{tag or name}.log", "w")
        proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def log(self, tag: str) -> str:
        return (self.tmp / f"{tag}.log").read_text()

    def stop_all(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _get(url: str, auth: tuple[str, str] | None = None):
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.slow
@pytest.mark.skipif(not (REPO / "dlnn_studies" / "cli" / "main.py").exists(), reason="needs the `dlnn` CLI (issue 4)")
def test_topology_launch_two_workers_and_the_dashboard(raw, tmp_path):
    db = f"dlnn_topology_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(ADMIN_URL)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{db}"')
    study = "topology"
    compose = resolve(raw, example_env(POSTGRES_HOST="127.0.0.1", POSTGRES_USER="postgres", POSTGRES_DB=db,
                                       DLNN_STUDIES=str(TINY_SPEC), DLNN_STUDY=study))
    topo = Topology(compose, tmp_path)
    auth = ("dlnn", "test-only-dash")
    try:
        launch = topo.start("launch")
        assert launch.wait(timeout=180) == 0, topo.log("launch")
        # `docker compose up --scale worker=2` on a host with 2 GPUs (faked: this machine has none).
        workers = [topo.start("worker", {"DLNN_GPU_COUNT": "2"}, tag=f"worker{i}") for i in range(2)]
        dashboard = topo.start("dashboard")
        for i, w in enumerate(workers):
            assert w.wait(timeout=420) == 0, topo.log(f"worker{i}")
        claimed = sorted(re.search(r"GPU slot claimed: GPU (\d)", topo.log(f"worker{i}")).group(1) for i in range(2))
        assert claimed == ["0", "1"], "each worker must claim its own GPU"

        import optuna

        storage_url = service_env(compose["services"]["worker"])["DLNN_STORAGE"]
        trials = optuna.load_study(study_name=study, storage=storage_url).get_trials()
        budget = tomllib.loads(TINY_SPEC.read_text())["budget"]["trials"]
        finished = [t for t in trials if t.state.is_finished()]
        assert len(finished) == budget and not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]

        base = f"http://127.0.0.1:{topo.host_port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                studies = _get(f"{base}/api/studies", auth)["study_summaries"]
                break
            except (urllib.error.URLError, ConnectionError):
                assert dashboard.poll() is None and time.monotonic() < deadline, topo.log("dashboard")
                time.sleep(0.5)
        summary = next(s for s in studies if s["study_name"] == study)
        detail = _get(f"{base}/api/studies/{summary['study_id']}", auth)
        assert len(detail["trials"]) == len(trials)
        with pytest.raises(urllib.error.HTTPError) as denied:  # bound beyond 127.0.0.1: a password is required
            _get(f"{base}/api/studies")
        assert denied.value.code == 401
    finally:
        topo.stop_all()
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()
