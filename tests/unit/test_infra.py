"""infra/ is checked offline by linters, and each check is shown to fail on a broken copy.

- SAM: cfn-lint on the template (it knows the Serverless transform's resource types), then the
  template expanded by aws-sam-translator and linted as plain CloudFormation, where every
  Lambda, IAM and Function URL property is checked against AWS's schemas.
- Kubernetes: kubernetes-validate --strict (the API's JSON schemas, unknown fields rejected).
- Compose: check-jsonschema with its vendored compose-spec schema.
- Dockerfile: parsed here (no hadolint on PyPI): non-root USER, HEALTHCHECK on /healthz,
  `falhook serve` as entry point on $PORT, a falhook-data volume, every COPY source present.
- Cloud Run: no linter of Knative's Service is on PyPI, so the revision's pod part is checked
  as a Kubernetes Pod by kubernetes-validate --strict, and the Knative and Cloud Run fields
  around it against Cloud Run's documented set, here.
- The example falhook.toml files load with falhook's own config loader.
"""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from falhook.config import load_settings
from tests.support.paths import ROOT

INFRA = ROOT / "infra"
SAM = INFRA / "sam" / "template.yaml"
K8S_VERSION = "1.30.0"


# --- SAM -----------------------------------------------------------------------------------------


def cfn_lint(path: Path) -> list[str]:
    """cfn-lint's findings (errors, warnings and informational) as strings."""
    from cfnlint.api import ManualArgs, lint_file

    return [str(m) for m in lint_file(path, config=ManualArgs(regions=["us-east-1"]))]


def sam_translate(template_text: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The SAM template as the CloudFormation it becomes (as `sam package` would deploy it:
    the local CodeUri replaced by an S3 location)."""
    from samtranslator.translator.transform import transform
    from samtranslator.yaml_helper import yaml_parse

    class NoManagedPolicies:  # the template names none; never look any up
        def load(self) -> dict[str, str]:
            return {}

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    template = yaml_parse(template_text)
    template["Globals"]["Function"]["CodeUri"] = "s3://placeholder-bucket/falhook.zip"
    return transform(template, {}, NoManagedPolicies())


def lint_sam(text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    source = tmp_path / "template.yaml"
    source.write_text(text)
    findings = cfn_lint(source)
    from samtranslator.model.exceptions import InvalidDocumentException

    try:
        translated = sam_translate(text, monkeypatch)
    except InvalidDocumentException as exc:  # SAM itself refuses it: that is a finding too
        return [*findings, f"SAM transform: {exc}"]
    expanded = tmp_path / "expanded.json"
    expanded.write_text(json.dumps(translated, indent=1))
    return findings + cfn_lint(expanded)


def test_the_sam_template_passes_cfn_lint_before_and_after_the_transform(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert lint_sam(SAM.read_text(), tmp_path, monkeypatch) == []


@pytest.mark.parametrize(
    ("good", "bad"),
    [
        ("Runtime: python3.11", "Runtime: python9.9"),  # caught only after the transform
        ("- s3:PutObject", "- s3:PutObjekt"),
        ("Schedule: !Ref DrainSchedule", "Schedule: !Ref DrainSchedul"),
        ("Handler: falhook.serverless.drain", "Handlr: falhook.serverless.drain"),
    ],
)
def test_a_broken_sam_template_fails_the_lint(
    good: str, bad: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = SAM.read_text()
    assert good in text
    assert lint_sam(text.replace(good, bad, 1), tmp_path, monkeypatch) != []


def test_the_sam_functions_and_least_privilege(monkeypatch: pytest.MonkeyPatch) -> None:
    expanded = sam_translate(SAM.read_text(), monkeypatch)["Resources"]
    functions = {k: v for k, v in expanded.items() if v["Type"] == "AWS::Lambda::Function"}
    handlers = {v["Properties"]["Handler"] for v in functions.values()}
    assert handlers == {"falhook.serverless.handler", "falhook.serverless.drain"}
    for fn in functions.values():
        props = fn["Properties"]
        assert props["Timeout"] <= 900 and props["MemorySize"] >= 512
        env = props["Environment"]["Variables"]
        assert env["FALHOOK_CONFIG"] == "/var/task/falhook.toml"
        assert not any("postgresql://" in json.dumps(v) for v in env.values())  # no secrets
    assert any(v["Type"] == "AWS::Lambda::Url" for v in expanded.values())
    assert any(v["Type"] == "AWS::Events::Rule" for v in expanded.values())  # the drain
    statements = [
        s
        for v in expanded.values()
        if v["Type"] == "AWS::IAM::Role"
        for p in v["Properties"].get("Policies", [])
        for s in p["PolicyDocument"]["Statement"]
    ]
    assert statements
    for s in statements:
        actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
        assert all("*" not in a for a in actions), s
        assert "*" not in json.dumps(s["Resource"]).replace("/*", ""), s  # named resources
        assert all(a.startswith(("s3:", "ssm:GetParameter")) for a in actions), s
    bucket_actions = {
        a for s in statements if s["Sid"] == "ResultsBucketObjects" for a in s["Action"]
    }
    assert bucket_actions == {
        "s3:PutObject",
        "s3:GetObject",
        "s3:AbortMultipartUpload",
        "s3:ListMultipartUploadParts",
    }


def test_the_bundled_lambda_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FALHOOK_DATABASE_URL", "postgresql://u@db.example:5432/falhook")
    monkeypatch.setenv("FALHOOK_MODE", "enqueue")
    monkeypatch.setenv("S3_BUCKET", "results")
    settings = load_settings(INFRA / "sam" / "falhook.toml")
    assert settings.serverless.mode == "enqueue"
    assert settings.store.url.startswith("postgresql://")
    assert settings.downloads.spool_dir.startswith("/tmp/")
    assert all(settings.routes[r].sinks == ("archive",) for r in settings.routes)


# --- Kubernetes ----------------------------------------------------------------------------------


def k8s_documents() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in sorted((INFRA / "k8s").glob("*.yaml")):
        docs.extend((path, d) for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def k8s_problems(doc: dict[str, Any]) -> str | None:
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return str(exc)
    return None


def test_the_kubernetes_manifests_validate_strictly() -> None:
    docs = k8s_documents()
    kinds = sorted(d["kind"] for _, d in docs)
    assert kinds == ["ConfigMap", "Deployment", "Deployment", "Service"]
    assert {str(p.name): k8s_problems(d) for p, d in docs} == {str(p.name): None for p, _ in docs}


def _deployment(component: str) -> dict[str, Any]:
    for _, d in k8s_documents():
        labels = d["metadata"].get("labels", {})
        if d["kind"] == "Deployment" and labels.get("app.kubernetes.io/component") == component:
            return d
    raise AssertionError(f"no {component} Deployment")


def test_a_broken_manifest_fails_validation() -> None:
    broken = copy.deepcopy(_deployment("receiver"))
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["readOnlyRootFileSystem"] = True  # misspelt: unknown field
    assert k8s_problems(broken) is not None
    wrong_type = copy.deepcopy(_deployment("worker"))
    wrong_type["spec"]["replicas"] = "two"
    assert k8s_problems(wrong_type) is not None


@pytest.mark.parametrize("component", ["receiver", "worker"])
def test_pods_run_non_root_on_a_read_only_root_with_limits(component: str) -> None:
    pod = _deployment(component)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    volumes = {v["name"]: v for v in pod["volumes"]}
    [container] = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/var/lib/falhook/spool"]]  # the spool is writable
    assert volumes[mounts["/etc/falhook"]]["configMap"]["name"] == "falhook-config"
    env = {e["name"]: e for e in container["env"]}
    assert env["FALHOOK_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "falhook-secrets"
    if component == "receiver":
        assert "--no-worker" in container["args"] and container["args"][0] == "serve"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    else:
        assert container["args"] == ["worker"]


def test_the_configmap_holds_a_falhook_config_that_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    [config_map] = [d for _, d in k8s_documents() if d["kind"] == "ConfigMap"]
    path = tmp_path / "falhook.toml"
    path.write_text(config_map["data"]["falhook.toml"])
    for name, value in {
        "FALHOOK_PUBLIC_URL": "https://hooks.example.com",
        "FALHOOK_DATABASE_URL": "postgresql://u@db:5432/falhook",
        "S3_BUCKET": "b",
        "S3_ENDPOINT_URL": "",
    }.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(path)
    assert settings.store.url.startswith("postgresql://")
    assert settings.spool_path == Path("/var/lib/falhook/spool")


# --- Compose -------------------------------------------------------------------------------------


COMPOSE = INFRA / "docker-compose.yml"


def test_compose_runs_receivers_workers_postgres_and_minio(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]  # merge keys (<<) resolved
    assert {"receiver", "worker", "postgres", "minio"} <= set(services)
    assert services["receiver"]["command"][0] == "serve"
    assert "--no-worker" in services["receiver"]["command"]
    assert services["worker"]["command"] == ["worker"]
    for name in ("receiver", "worker"):
        assert "./falhook.toml:/etc/falhook/falhook.toml:ro" in services[name]["volumes"]
        assert services[name]["environment"]["FALHOOK_CONFIG"] == "/etc/falhook/falhook.toml"
        assert services[name]["build"]["dockerfile"] == "infra/Dockerfile"
    for name, value in {
        "FALHOOK_PUBLIC_URL": "http://localhost:8000",
        "POSTGRES_PASSWORD": "pw",
        "S3_BUCKET": "falhook",
        "S3_ENDPOINT_URL": "http://minio:9000",
    }.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(INFRA / "falhook.toml")
    assert settings.store.url == "postgresql://falhook:pw@postgres:5432/falhook"
    assert settings.sinks["archive"].type == "s3"


# --- Dockerfile ----------------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or (line.startswith("#") and not pending):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, args = full.partition(" ")
        out.append((word.upper(), args.strip()))
    return out


def _exec_form(args: str) -> list[str]:
    return json.loads(args) if args.startswith("[") else shlex.split(args)


def dockerfile_problems(text: str, context: Path = ROOT) -> list[str]:
    problems: list[str] = []
    ins = dockerfile_instructions(text)
    stages = [i for i, (word, _) in enumerate(ins) if word == "FROM"]
    if not stages:
        return ["no FROM"]
    final = ins[stages[-1] :]
    if not ins[stages[-1]][1].startswith("python:3.11-slim"):
        problems.append("the final stage is not python:3.11-slim")
    users = [args for word, args in final if word == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("the final stage runs as root")
    health = [args for word, args in final if word == "HEALTHCHECK"]
    if not health or "/healthz" not in health[-1]:
        problems.append("no HEALTHCHECK on /healthz")
    entry = [_exec_form(a) for w, a in final if w == "ENTRYPOINT"]
    cmd = [_exec_form(a) for w, a in final if w == "CMD"]
    command = (entry[-1] if entry else []) + (cmd[-1] if cmd else [])
    if command[:2] != ["falhook", "serve"]:
        problems.append(f"the entry point is {command}, not falhook serve")
    if "--port" in command:
        problems.append("the command fixes --port: a platform's $PORT (Cloud Run) is ignored")
    env = " ".join(a for w, a in final if w == "ENV")
    if "PORT=" not in env:
        problems.append("no default PORT in the environment")
    volumes = " ".join(a for w, a in final if w == "VOLUME")
    if "falhook-data" not in volumes:
        problems.append("no falhook-data volume")
    for word, args in ins:
        if word == "COPY" and not args.startswith("--from"):
            for source in _exec_form(args)[:-1]:
                if not (context / source).exists():
                    problems.append(f"COPY {source}: not in the build context")
    return problems


def test_the_dockerfile_is_non_root_with_a_healthcheck_and_falhook_serve() -> None:
    assert dockerfile_problems((INFRA / "Dockerfile").read_text()) == []


@pytest.mark.parametrize(
    ("good", "bad"),
    [
        ("USER 10001:10001", "USER root"),
        ("/healthz", "/"),
        ('CMD ["serve"', 'CMD ["worker"'),
        ("COPY handlers ./handlers", "COPY handler ./handlers"),
        ('VOLUME ["/var/lib/falhook/falhook-data"]', ""),
        (
            'CMD ["serve", "--host", "0.0.0.0"]',
            'CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]',
        ),
        ("    PORT=8000", "    NOTHING=8000"),
    ],
)
def test_a_broken_dockerfile_is_caught(good: str, bad: str) -> None:
    text = (INFRA / "Dockerfile").read_text()
    assert good in text
    assert dockerfile_problems(text.replace(good, bad)) != []


def test_the_build_context_ignore_file_keeps_what_the_dockerfile_copies() -> None:
    ignore = (INFRA / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*") :][:1] == ["*"]  # everything out, then re-included
    for needed in ("pyproject.toml", "README.md", "receiver/", "handlers/"):
        assert f"!{needed}" in ignore


# --- Cloud Run -----------------------------------------------------------------------------------

CLOUDRUN = INFRA / "cloudrun"
# What Cloud Run's Service YAML takes around the pod (its YAML reference, v1).
_SERVICE_KEYS = {"apiVersion", "kind", "metadata", "spec"}
_SERVICE_SPEC_KEYS = {"template", "traffic"}
_REVISION_ONLY_KEYS = {"containerConcurrency", "timeoutSeconds"}
_CLOUD_RUN_SIGTERM_GRACE = 10.0  # seconds from SIGTERM to SIGKILL, fixed by Cloud Run


def cloudrun_problems(doc: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    if (doc.get("apiVersion"), doc.get("kind")) != ("serving.knative.dev/v1", "Service"):
        problems.append("not a serving.knative.dev/v1 Service")
    problems += [f"unknown field {k}" for k in sorted(set(doc) - _SERVICE_KEYS)]
    spec = doc.get("spec") or {}
    problems += [f"unknown field spec.{k}" for k in sorted(set(spec) - _SERVICE_SPEC_KEYS)]
    template = spec.get("template") or {}
    revision = dict(template.get("spec") or {})
    concurrency = revision.pop("containerConcurrency", 80)
    timeout = revision.pop("timeoutSeconds", 300)
    if not (isinstance(concurrency, int) and 0 <= concurrency <= 1000):
        problems.append("containerConcurrency must be an integer from 0 to 1000")
    if not (isinstance(timeout, int) and 1 <= timeout <= 3600):
        problems.append("timeoutSeconds must be an integer from 1 to 3600")
    for where, meta in (("metadata", doc.get("metadata")), ("template", template.get("metadata"))):
        for key, value in ((meta or {}).get("annotations") or {}).items():
            if not isinstance(value, str):
                problems.append(f"{where} annotation {key} must be a string, not {value!r}")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "revision",
           **(template.get("metadata") or {})}, "spec": revision}  # fmt: skip
    found = k8s_problems(pod)
    if found is not None:
        problems.append(f"the revision's pod: {found}")
    containers = revision.get("containers") or []
    serving = [c for c in containers if c.get("ports")]
    if len(serving) != 1 or len(serving[0]["ports"]) != 1:
        problems.append("exactly one container must declare exactly one port")
    elif serving[0]["ports"][0].get("name", "http1") not in ("http1", "h2c"):
        problems.append("the port's name must be http1 or h2c")
    for c in containers:
        if "--port" in (c.get("args") or []) or "--port" in (c.get("command") or []):
            problems.append(f"container {c.get('name')}: --port given, $PORT ignored")
        if "readinessProbe" in c:
            problems.append(
                f"container {c.get('name')}: Cloud Run takes startupProbe, not readinessProbe"
            )
    return problems


def cloudrun_service() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((CLOUDRUN / "service.yaml").read_text())
    return doc


def test_the_cloud_run_service_validates() -> None:
    assert cloudrun_problems(cloudrun_service()) == []


@pytest.mark.parametrize(
    ("good", "bad"),
    [
        ("containerConcurrency: 80", "containerConcurrency: 8000"),
        ('cpu-throttling: "false"', "cpu-throttling: false"),
        ("containerPort: 8080", "containerPort: eighty"),
        ("          startupProbe:", "          startupProbes:"),  # unknown field in the pod
        ('args: ["serve", "--host", "0.0.0.0"]', 'args: ["serve", "--port", "8080"]'),
        ("- name: http1", "- name: web"),
        ("  template:", "  templates:"),
        ("          startupProbe:", "          readinessProbe:"),
    ],
)
def test_a_broken_cloud_run_service_fails_validation(good: str, bad: str) -> None:
    text = (CLOUDRUN / "service.yaml").read_text()
    assert good in text
    assert cloudrun_problems(yaml.safe_load(text.replace(good, bad, 1))) != []


def test_the_cloud_run_service_runs_falhook_serve_on_a_shared_postgres(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = cloudrun_service()
    template = service["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    # The worker runs between requests: CPU always allocated, an instance always up.
    assert annotations["run.googleapis.com/cpu-throttling"] == "false"
    assert int(annotations["autoscaling.knative.dev/minScale"]) >= 1
    [container] = template["spec"]["containers"]
    assert container["args"][:1] == ["serve"] and "--no-worker" not in container["args"]
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e for e in container["env"]}
    for secret in ("FALHOOK_DATABASE_URL", "FAL_KEY", "AWS_SECRET_ACCESS_KEY"):
        assert "valueFrom" in env[secret] and "value" not in env[secret]
    for name, value in {
        "FALHOOK_PUBLIC_URL": "https://falhook-x.a.run.app",
        "FALHOOK_DATABASE_URL": "postgresql://u@/falhook?host=/cloudsql/p:r:db",
        "GCS_BUCKET": "results",
    }.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(CLOUDRUN / "falhook.toml")
    assert settings.store.url.startswith("postgresql://")  # instances come and go
    assert settings.sinks["archive"].options["endpoint_url"] == "https://storage.googleapis.com"
    # falhook's shutdown fits Cloud Run's 10 s: the worker's grace, with room for uvicorn's
    # wait on open requests (milliseconds for a webhook) and the hand-back.
    assert settings.delivery.shutdown_grace + 5 <= _CLOUD_RUN_SIGTERM_GRACE
