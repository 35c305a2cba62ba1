"""deploy/k8s: the manifests parse, and run the same image and the same commands as docker-compose.yml."""

import re
from pathlib import Path

import pytest
import yaml

from composefile import REPO, duration_s, example_env, load_compose, resolve, service_env
from dlnn_studies.cli.main import commands
from dlnn_studies.store import urls

K8S = REPO / "deploy" / "k8s"
SECRET_WORDS = re.compile(r"PASSWORD|SECRET|TOKEN|PASSWD|API_KEY", re.I)
SAME_AS_COMPOSE = {"dlnn-launch": "launch", "dlnn-worker": "worker", "dlnn-dashboard": "dashboard"}


@pytest.fixture(scope="module")
def manifests():
    """{(kind, name): document} over every manifest file."""
    found = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc and {"apiVersion", "kind"} <= set(doc), f"{path.name}: a document without apiVersion/kind"
            name = doc.get("metadata", {}).get("name", path.stem)
            assert (doc["kind"], name) not in found, f"{path.name}: duplicate {doc['kind']}/{name}"
            found[(doc["kind"], name)] = doc
    return found


@pytest.fixture(scope="module")
def compose():
    return resolve(load_compose(), example_env())


def _config(manifests) -> dict[str, str]:
    return manifests[("ConfigMap", "dlnn-config")]["data"]


def _pod(doc) -> dict:
    return doc["spec"]["template"]["spec"]


def _containers(doc, init: bool = False) -> list[dict]:
    pod = _pod(doc)
    return pod["containers"] + (pod.get("initContainers", []) if init else [])


def _env(container, config) -> dict[str, str]:
    """The container's environment with ConfigMap values filled in and Secrets as <secret:key>."""
    env = {}
    for item in container.get("env", []):
        source = item.get("valueFrom", {})
        if "configMapKeyRef" in source:
            assert source["configMapKeyRef"]["name"] == "dlnn-config"
            env[item["name"]] = config[source["configMapKeyRef"]["key"]]
        elif "secretKeyRef" in source:
            env[item["name"]] = f"<secret:{source['secretKeyRef']['key']}>"
        else:
            env[item["name"]] = str(item["value"])
    return env


def _argv(container, env) -> list[str]:
    """command + args with Kubernetes' $(VAR) expansion."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], a) for a in container["command"] + container.get("args", [])]


def test_every_manifest_parses_and_kustomization_lists_existing_files(manifests):
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    assert "proxy.yaml" not in kustomization["resources"] and (K8S / "proxy.yaml").is_file()  # optional
    kinds = {kind for kind, _ in manifests}
    assert {"ConfigMap", "Service", "StatefulSet", "PersistentVolumeClaim", "Job", "Deployment"} <= kinds
    assert "Secret" not in kinds  # created with kubectl from generated passwords, never committed


def test_same_image_and_commands_as_compose(manifests, compose):
    config = _config(manifests)
    for name, service in SAME_AS_COMPOSE.items():
        kind = "Deployment" if name == "dlnn-dashboard" else "Job"
        (container,) = _containers(manifests[(kind, name)])
        assert container["image"] == compose["services"][service]["image"] == "dlnn-studies:latest"
        env = _env(container, config)
        assert _argv(container, env) == compose["services"][service]["command"], name
        compose_env = service_env(compose["services"][service])
        for key in ("DLNN_STORAGE", "PGPASSWORD", "DLNN_ARTIFACTS", "DLNN_CACHE_DIR"):
            assert key in env and key in compose_env, f"{name}: {key}"
        assert env["DLNN_ARTIFACTS"] == compose_env["DLNN_ARTIFACTS"]
        assert env["PGPASSWORD"] == "<secret:POSTGRES_PASSWORD>"
    for (kind, name), doc in manifests.items():
        if kind in ("Job", "Deployment") and name != "dlnn-postgres":
            for c in _containers(doc, init=True):
                assert c["image"] == "dlnn-studies:latest", f"{name}/{c['name']}"
                argv = c["command"]
                if argv[:2] == ["python", "-m"]:
                    assert (REPO / (argv[2].replace(".", "/") + ".py")).is_file(), argv
                if argv[0] == "dlnn":
                    assert argv[1] in commands(), argv


def test_worker_job_has_parallelism_a_gpu_each_and_the_compose_grace_period(manifests, compose):
    job = manifests[("Job", "dlnn-worker")]
    assert job["spec"]["parallelism"] >= 1 and "completions" not in job["spec"]  # a work queue
    pod = _pod(job)
    assert pod["restartPolicy"] == "OnFailure"
    assert pod["terminationGracePeriodSeconds"] == duration_s(compose["services"]["worker"]["stop_grace_period"])
    (worker,) = _containers(job)
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    config = _config(manifests)
    assert _env(worker, config)["DLNN_GPU_SLOTS"] == "off"  # the device plugin assigns the GPU
    (wait,) = pod["initContainers"]
    assert _argv(wait, _env(wait, config))[:4] == ["dlnn", "wait", "--study", config["DLNN_STUDY"]]
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_credentials_come_from_the_secret(manifests):
    for (kind, name), doc in manifests.items():
        if kind == "ConfigMap":
            for key, value in doc["data"].items():
                assert not SECRET_WORDS.search(key), key
                assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", value), f"{key}: password in a URL"
        if kind not in ("Job", "Deployment", "StatefulSet"):
            continue
        for c in _containers(doc, init=True):
            for item in c.get("env", []):
                if SECRET_WORDS.search(item["name"]):
                    assert item["valueFrom"]["secretKeyRef"]["name"] == "dlnn-credentials", f"{name}: {item['name']}"


def test_postgres_and_storage_urls_agree(manifests, compose):
    config = _config(manifests)
    postgres = manifests[("StatefulSet", "dlnn-postgres")]
    (container,) = _containers(postgres)
    assert container["image"] == compose["services"]["postgres"]["image"]
    assert "pg_isready" in " ".join(container["readinessProbe"]["exec"]["command"])
    service = manifests[("Service", "dlnn-postgres")]
    port = service["spec"]["ports"][0]["port"]
    expected = f"postgresql+psycopg2://{config['POSTGRES_USER']}@dlnn-postgres:{port}/{config['POSTGRES_DB']}"
    assert config["DLNN_STORAGE"] == config["DLNN_WORKER_STORAGE"] == expected


def test_dashboard_service_is_cluster_internal(manifests):
    service = manifests[("Service", "dlnn-dashboard")]
    assert service["spec"]["type"] == "ClusterIP"
    (container,) = _containers(manifests[("Deployment", "dlnn-dashboard")])
    port = int(container["command"][container["command"].index("--port") + 1])
    assert service["spec"]["ports"][0]["targetPort"] == container["ports"][0]["containerPort"] == port


def test_proxy_manifest_matches_the_worker_url_it_documents(manifests):
    service = manifests[("Service", "dlnn-proxy")]
    (container,) = _containers(manifests[("Deployment", "dlnn-proxy")])
    argv = container["command"]
    assert argv[:2] == ["dlnn", "proxy"]
    port = int(argv[argv.index("--port") + 1])
    assert service["spec"]["ports"][0]["targetPort"] == port == urls.DEFAULT_PROXY_PORT
    documented = re.search(r"grpc://[\w.-]+:\d+", (K8S / "proxy.yaml").read_text()).group()
    address = urls.parse_proxy_url(documented)
    assert (address.host, address.port) == (service["metadata"]["name"], service["spec"]["ports"][0]["port"])
    env = _env(container, _config(manifests))
    assert not urls.is_grpc(env["DLNN_STORAGE"])  # the proxy itself talks to the database
