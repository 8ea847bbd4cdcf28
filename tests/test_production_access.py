"""Who may promote: the production profile with authentication (docs/production.md, section 8,
"Access control"), on real servers started once for the module:

* PostgreSQL: one role per server, each with a password (sent to PostgreSQL as a SCRAM
  verifier, never in clear), read by the servers from a ``.pgpass`` (``PGPASSFILE``); no
  password in a connection string or on a command line;
* ``mlflow server --app-name basic-auth`` (permissions database on PostgreSQL beside the
  backend store, ``default_permission = NO_PERMISSIONS``), its users and permissions set up
  by ``vae-anomaly access``, which also replaces the admin's bootstrap password;
* ``prefect server start`` with ``PREFECT_SERVER_API_AUTH_STRING``; the worker and every
  client with ``PREFECT_API_AUTH_STRING``.

Then: an unauthenticated client is refused by both servers; a wrong password ends with one
line; the trainer registers, the reviewer promotes through the gate; the scoring role scores
a batch through a Prefect worker and logs its run, but may not register a version or move
``@champion`` (one line, aliases unchanged); and no password appears in any log, parameter,
tag or artifact the run produced, nor on a command line.

It skips where no PostgreSQL answers on $VAE_TEST_POSTGRES (default
postgresql://postgres@127.0.0.1:5432), as tests/test_production_postgres.py does. On a
PostgreSQL with trust authentication (the test machine's) the role passwords are stored but
not checked at login; the module says which kind it ran against.
"""

import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import subprocess
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlsplit

import pandas as pd
import pytest
import requests

from tests.helpers import CARDIO, ROOT, free_port, write_pipeline_config
from tests.postgres_servers import (
    BIN,
    POSTGRES,
    Processes,
    admin_connection,
    deploy_command,
    mlflow_server_command,
    prefect_server_command,
    profile_env,
    tail,
)

pytestmark = pytest.mark.e2e

MODEL, SCORING_EXPERIMENT = "vae-e2e-access", "vae-e2e-scoring"
USERS = {"scorer": "scorer", "trainer": "trainer", "reviewer": "reviewer"}  # name -> role
CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "PREFECT_API_AUTH_STRING")
RUN_TIMEOUT_S = 300


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """PostgreSQL's SCRAM-SHA-256 verifier of ``password`` (RFC 5802/7677, as ``psql
    \\password`` computes it): ``CREATE ROLE ... PASSWORD '<verifier>'`` stores the password
    without sending it."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    stored = b64(hashlib.sha256(client_key).digest())
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${stored}:{b64(server_key)}"


def _password() -> str:
    return secrets.token_urlsafe(18)  # 24 characters; MLflow wants at least 12


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    """The secured profile, running: yields a namespace (urls, env(), paths, secrets)."""
    conn = admin_connection()
    tmp = tmp_path_factory.mktemp("access")
    pg = urlsplit(POSTGRES)
    host, port, tag = pg.hostname or "127.0.0.1", pg.port or 5432, uuid.uuid4().hex[:8]
    roles = {"ml": f"vae_e2e_ml_{tag}", "pf": f"vae_e2e_pf_{tag}"}
    dbs = {"ml": f"vae_e2e_ml_{tag}", "auth": f"vae_e2e_auth_{tag}", "pf": f"vae_e2e_pf_{tag}"}
    pg_passwords = {key: _password() for key in roles}
    p = SimpleNamespace(
        tmp=tmp,
        pgpass=tmp / "pgpass",
        passwords={user: _password() for user in USERS},
        boot_admin=_password(),
        admin=_password(),
        auth_string=f"admin:{_password()}",
        secret_key=secrets.token_hex(16),
        pg_passwords=pg_passwords,
        mlflow_url=f"http://127.0.0.1:{free_port()}",
        api=f"http://127.0.0.1:{free_port()}/api",
        artifacts=tmp / "mlflow-artifacts",
        processes=Processes(tmp),
    )
    # .pgpass: host:port:database:user:password, mode 600 (libpq and asyncpg refuse others)
    p.pgpass.write_text("".join(f"{host}:{port}:*:{roles[k]}:{pg_passwords[k]}\n" for k in roles))
    p.pgpass.chmod(0o600)
    ini = tmp / "basic_auth.ini"
    ini.write_text(
        "[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
        f"database_uri = postgresql+psycopg2://{roles['ml']}@{host}:{port}/{dbs['auth']}\n"
        "admin_username = admin\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # without it every request hashes the password again (PBKDF2): about 1 s a request
        # on a loaded 2-core machine, minutes for the hundred files of a logged model
        "auth_cache_ttl_seconds = 60\n"
    )
    p.config = write_pipeline_config(
        tmp,
        {
            "tracking": {
                "uri": p.mlflow_url,
                "registered_model": MODEL,
                "scoring_experiment": SCORING_EXPERIMENT,
            },
            "scoring": {"output_dir": "scores"},
        },
    )
    base = {k: v for k, v in os.environ.items() if k not in CREDENTIALS and not k.startswith("PG")}
    base = profile_env(
        base,
        tmp / "prefect-home",
        p.api,
        p.mlflow_url,
        TMPDIR=str(tmp),  # the temporary folders of model loads, inside the scanned folder
    )

    def env(user: str | None = None, password: str | None = None, **extra) -> dict:
        """A client's environment: MLflow credentials of ``user`` (its own password unless
        given) and the Prefect auth string (unless ``user`` is None: no credentials)."""
        out = dict(base, **extra)
        if user is not None:
            out["MLFLOW_TRACKING_USERNAME"] = user
            out["MLFLOW_TRACKING_PASSWORD"] = password or p.passwords.get(user, p.admin)
            out["PREFECT_API_AUTH_STRING"] = p.auth_string
        return out

    p.env = env
    try:
        with conn.cursor() as cur:
            for key, role in roles.items():
                cur.execute(
                    f'CREATE ROLE "{role}" LOGIN PASSWORD %s', (scram_verifier(pg_passwords[key]),)
                )
            for key, db in dbs.items():
                cur.execute(
                    f'CREATE DATABASE "{db}" OWNER "{roles["pf" if key == "pf" else "ml"]}"'
                )
        p.pg_checks_passwords = _pg_checks_passwords(host, port, roles["ml"], dbs["ml"])
        _start_servers(p, base, host, port, roles, dbs, ini)
        # the work pool and the deployments, meanwhile (Prefect's auth string only)
        p.deploy = p.processes.start(
            "deploy", deploy_command("access-pool", p.config), env("admin")
        )
        _run_cli(p, "access-setup", ["access", "--config", p.config, *(
            arg for user, role in USERS.items() for arg in ("--user", f"{user}={role}"))],
            env("admin", p.boot_admin, VAE_ACCESS_ADMIN_PASSWORD=p.admin,
                **{f"VAE_ACCESS_PASSWORD_{u.upper()}": pw for u, pw in p.passwords.items()}),
        )  # fmt: skip
        yield p
    finally:
        p.processes.stop()
        with conn.cursor() as cur:
            for db in dbs.values():
                cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            for role in roles.values():
                cur.execute(f'DROP ROLE IF EXISTS "{role}"')
        conn.close()


def _pg_checks_passwords(host: str, port: int, role: str, db: str) -> bool:
    """Whether the PostgreSQL server checks passwords: a wrong one is refused."""
    import psycopg2

    try:
        psycopg2.connect(host=host, port=port, user=role, dbname=db, password="wrong",
                         passfile=os.devnull, connect_timeout=5).close()  # fmt: skip
    except psycopg2.OperationalError:
        return True
    return False


def _start_servers(p, base: dict, host: str, port: int, roles: dict, dbs: dict, ini: Path):
    """Both servers, their PostgreSQL passwords from the .pgpass only; then the command
    lines of every process they started, kept for the leak check."""
    server_env = dict(base, PGPASSFILE=str(p.pgpass))
    ml_env = dict(
        server_env,
        MLFLOW_AUTH_CONFIG_PATH=str(ini),
        MLFLOW_FLASK_SERVER_SECRET_KEY=p.secret_key,
        MLFLOW_AUTH_ADMIN_PASSWORD=p.boot_admin,  # used once, when the admin is created
    )
    pf_env = dict(
        server_env,
        PREFECT_SERVER_API_AUTH_STRING=p.auth_string,
        PREFECT_API_DATABASE_CONNECTION_URL=f"postgresql+asyncpg://{roles['pf']}@{host}:{port}/{dbs['pf']}",
    )  # fmt: skip
    backend_store = f"postgresql+psycopg2://{roles['ml']}@{host}:{port}/{dbs['ml']}"
    p.processes.start_servers(
        (mlflow_server_command(backend_store, p.artifacts, p.mlflow_url, 1, "--app-name",
                               "basic-auth"), ml_env),
        (prefect_server_command(p.api), pf_env),
        (p.mlflow_url, p.api),
    )  # fmt: skip
    (p.tmp / "command-lines.txt").write_text("\n".join(_command_lines(p.processes.procs)))


def _command_lines(procs: list[subprocess.Popen]) -> list[str]:
    """The command line of every live process in the groups of ``procs``."""
    groups, lines = {proc.pid for proc in procs}, []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[2]) in groups:
                lines.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode())
    return lines


def _run_cli(p, name: str, args: list, env: dict, expect: int = 0, process: bool = False):
    """``vae-anomaly ARGS`` with ``env``'s credentials, in this process (Typer's runner: the
    imports are paid once) or as a real process; (exit code, stdout, stderr), also kept in
    ``<name>.log`` for the leak scan."""
    args = [str(a) for a in args]
    if process:
        done = subprocess.run([str(BIN / "vae-anomaly"), *args], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=RUN_TIMEOUT_S)  # fmt: skip
        code, out, err = done.returncode, done.stdout, done.stderr
    else:
        from typer.testing import CliRunner

        from vae_core.cli import app

        given = {
            k: v
            for k, v in env.items()
            if k in (*CREDENTIALS, "MLFLOW_TRACKING_URI") or k.startswith("VAE_ACCESS_")
        }
        done = CliRunner().invoke(app, args, env={**dict.fromkeys(CREDENTIALS), **given})
        code, out, err = done.exit_code, done.stdout, done.stderr
        assert done.exception is None or isinstance(done.exception, SystemExit), err
    (p.tmp / f"{name}.log").write_text(f"{out}\n--- stderr\n{err}")
    assert code == expect, f"{name}: {code}\n{out}\n{err}"
    return SimpleNamespace(returncode=code, stdout=out, stderr=err)


def _one_line_error(done) -> str:
    """The refusal: exit code 2, no traceback, one line on stderr starting with 'error:'."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr, done.stderr
    assert [line for line in lines if line.startswith("error:")] == lines[-1:], done.stderr
    return lines[-1]


def _admin_client(p, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", p.admin)
    return MlflowClient(tracking_uri=p.mlflow_url, registry_uri=p.mlflow_url)


def _registry_state(client) -> dict:
    """Aliases and every version's tags and description: what a refused call must not change."""
    aliases = {k: str(v) for k, v in client.get_registered_model(MODEL).aliases.items()}
    versions = client.search_model_versions(f"name = '{MODEL}'")
    return {"aliases": aliases, **{v.version: (v.tags, v.description) for v in versions}}


@pytest.fixture(scope="module")
def trained(profile):
    """The trainer registers version 1 (@challenger)."""
    p = profile
    args = ["train", "--data", CARDIO, "--config", p.config, "--label-column", "label",
            "--id-column", "record_id", "--out", p.tmp / "train"]  # fmt: skip
    _run_cli(p, "train", args, p.env("trainer"))
    return p


# --------------------------------------------------------------------------- the tests


def test_unauthenticated_clients_are_refused_by_both_servers(profile):
    p = profile
    search = f"{p.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert requests.get(search, timeout=10).status_code == 401
    # the bootstrap password was replaced by `vae-anomaly access`
    assert requests.get(search, auth=("admin", p.boot_admin), timeout=10).status_code == 401
    assert requests.get(search, auth=("admin", p.admin), timeout=10).status_code == 200
    flows = f"{p.api}/flows/filter"
    assert requests.post(flows, json={}, timeout=10).status_code == 401
    assert requests.post(flows, json={}, auth=("admin", "wrong"), timeout=10).status_code == 401
    user, _, password = p.auth_string.partition(":")
    assert requests.post(flows, json={}, auth=(user, password), timeout=10).status_code == 200

    done = _run_cli(p, "promote-anonymous", ["promote", "--config", p.config], p.env(), 2)
    line = _one_line_error(done)
    assert "MLFLOW_TRACKING_USERNAME" in line and p.mlflow_url in line, line


def test_a_wrong_password_ends_with_one_line_and_writes_nothing(profile, monkeypatch):
    p = profile
    client = _admin_client(p, monkeypatch)
    experiment = client.get_experiment_by_name("vae-anomaly")  # made by `vae-anomaly access`
    runs = len(client.search_runs([experiment.experiment_id]))
    wrong = p.env("trainer", password="not-the-password-at-all")
    args = ["train", "--data", CARDIO, "--out", p.tmp / "train-wrong", "--config", p.config]
    done = _run_cli(p, "train-wrong-password", args, wrong, 2, process=True)  # a real process
    line = _one_line_error(done)
    assert "'trainer'" in line and "MLFLOW_TRACKING_PASSWORD" in line, line
    assert len(client.search_runs([experiment.experiment_id])) == runs
    assert not (p.tmp / "train-wrong").exists()


def test_the_scoring_role_may_not_register_or_move_champion(trained, monkeypatch):
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    p = trained
    before = _registry_state(_admin_client(p, monkeypatch))
    assert before["aliases"] == {"challenger": "1"}

    done = _run_cli(p, "promote-as-scorer", ["promote", "--config", p.config], p.env("scorer"), 2)
    line = _one_line_error(done)
    assert "user 'scorer' may not" in line and f"EDIT on registered model '{MODEL}'" in line, line
    train = ["train", "--data", CARDIO, "--out", p.tmp / "train-scorer", "--config", p.config]
    line = _one_line_error(_run_cli(p, "train-as-scorer", train, p.env("scorer"), 2))
    assert "user 'scorer' may not log a training run" in line, line

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "scorer")  # the client reads it per call
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", p.passwords["scorer"])
    scorer = MlflowClient(tracking_uri=p.mlflow_url, registry_uri=p.mlflow_url)
    v1 = scorer.get_model_version(MODEL, "1")  # READ: allowed
    with pytest.raises(MlflowException) as refused:
        scorer.create_model_version(MODEL, v1.source, v1.run_id, model_id=v1.model_id)
    assert refused.value.error_code == "PERMISSION_DENIED"
    with pytest.raises(MlflowException) as refused:
        scorer.set_registered_model_alias(MODEL, "champion", "1")
    assert refused.value.error_code == "PERMISSION_DENIED"
    assert _registry_state(_admin_client(p, monkeypatch)) == before


def test_the_reviewer_promotes_and_the_scoring_role_scores_through_a_worker(trained, monkeypatch):
    p = trained
    promoted = _run_cli(p, "promote", ["promote", "--config", p.config], p.env("reviewer"))
    assert f"models:/{MODEL}@champion -> version 1" in promoted.stdout, promoted.stdout
    batch = p.tmp / "b0.csv"
    pd.read_csv(CARDIO).iloc[::4].to_csv(batch, index=False)
    assert p.deploy.wait(timeout=RUN_TIMEOUT_S) == 0, tail(p.tmp / "deploy.log")
    # the worker and its flow runs hold the scoring role's credentials, nothing more
    p.processes.start("worker", [BIN / "prefect", "worker", "start", "--pool", "access-pool"],
                      p.env("scorer"))  # fmt: skip
    run = subprocess.run(
        [str(BIN / "prefect"), "deployment", "run", "score/nightly", "--param",
         f"data_path={batch}", "--param", "batch_id=b0"],
        env=p.env("scorer"), cwd=ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    flow_run_id = next(x.split("UUID:")[1].strip() for x in run.stdout.splitlines() if "UUID:" in x)
    state = _wait_for(p, flow_run_id)
    mlflow_log = p.processes.logs[0].read_text().splitlines()
    refused = [x for x in mlflow_log if " 403 " in x or " 401 " in x]
    assert state["state_type"] == "COMPLETED", (state["state"]["message"], refused[-5:])
    scores = pd.read_parquet(p.tmp / "scores" / "b0.parquet")
    assert len(scores) == len(pd.read_csv(batch))

    admin = _admin_client(p, monkeypatch)
    experiment = admin.get_experiment_by_name(SCORING_EXPERIMENT)
    (logged,) = admin.search_runs([experiment.experiment_id])
    assert logged.info.status == "FINISHED" and logged.data.tags["vae.step"] == "scoring"
    assert logged.data.tags["model.version"] == "1" and logged.data.tags["batch.id"] == "b0"


def _wait_for(p, flow_run_id: str) -> dict:
    """The flow run once it is in a final state, polled through the API with the auth string."""
    user, _, password = p.auth_string.partition(":")
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        state = requests.get(f"{p.api}/flow_runs/{flow_run_id}", auth=(user, password), timeout=10)
        state.raise_for_status()
        if state.json()["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return state.json()
        time.sleep(1)
    pytest.fail(f"flow run {flow_run_id} not finished after {RUN_TIMEOUT_S} s:\n"
                f"{tail(p.processes.logs[-1])}")  # fmt: skip


def test_no_password_in_any_log_parameter_tag_artifact_or_command_line(trained, monkeypatch):
    """Runs last: everything the module's runs produced, scanned for every password."""
    p = trained
    passwords = [*p.passwords.values(), *p.pg_passwords.values(), p.boot_admin, p.admin,
                 p.auth_string.partition(":")[2], p.secret_key]  # fmt: skip
    pairs = [f"{u}:{pw}" for u, pw in [*p.passwords.items(), ("admin", p.admin)]]
    needles = [*passwords, *(base64.b64encode(x.encode()).decode() for x in pairs)]

    def leaks(text: str) -> list[int]:
        return [i for i, needle in enumerate(needles) if needle in text]

    # the scan works: the .pgpass holds the PostgreSQL passwords (and is the one place)
    assert len(leaks(p.pgpass.read_text())) == len(p.pg_passwords)
    found = {}
    # Prefect's process worker hands a flow run its environment (these credentials) through
    # a workspace.json in a private temporary folder (mode 700), removed when the run ends
    # (docs/production.md): checked for privacy here, not for content
    private = list(p.tmp.glob("prefect-workspace-attempt-*"))
    for folder in private:
        with contextlib.suppress(FileNotFoundError):  # the run ended meanwhile
            assert folder.stat().st_mode & 0o077 == 0, folder
    files = [
        f
        for f in p.tmp.rglob("*")
        if f.is_file() and f != p.pgpass and not any(d in f.parents for d in private)
    ]
    assert {"mlflow-server.log", "prefect-server.log", "worker.log", "command-lines.txt"} <= {
        f.name for f in files
    }
    assert any(f.suffix == ".parquet" for f in p.artifacts.rglob("*"))  # the artifacts are here
    for f in files:  # logs, command lines, CLI outputs, artifacts, scores, Prefect's home
        if hits := leaks(f.read_bytes().decode("latin-1")):
            found[str(f.relative_to(p.tmp))] = hits
    for name, text in {**_mlflow_records(p, monkeypatch), **_prefect_records(p)}.items():
        if hits := leaks(text):
            found[name] = hits
    assert not found, f"passwords (by index) found in: {found}"
    print(f"scanned {len(files)} files; PostgreSQL checks passwords: {p.pg_checks_passwords}")


def _mlflow_records(p, monkeypatch) -> dict[str, str]:
    """Every run's parameters and tags, every logged model's, the registered model and its
    versions (tags, descriptions), as text by name."""
    client = _admin_client(p, monkeypatch)
    out = {}
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id]):
            out[f"run {run.info.run_id}"] = json.dumps([run.data.params, run.data.tags])
        for model in client.search_logged_models([exp.experiment_id]):
            out[f"logged model {model.model_id}"] = json.dumps([model.params, model.tags])
    out["registered model"] = json.dumps(
        [(v.tags, v.description) for v in client.search_model_versions(f"name = '{MODEL}'")]
        + [client.get_registered_model(MODEL).description]
    )
    assert any(name.startswith("run ") for name in out)
    return out


def _prefect_records(p) -> dict[str, str]:
    """Flow runs (their parameters), deployments (parameters, job variables), logs and
    artifacts on the Prefect server, as text by kind."""
    user, _, password = p.auth_string.partition(":")
    out = {}
    for kind in ("flow_runs", "deployments", "logs", "artifacts"):
        answer = requests.post(f"{p.api}/{kind}/filter", json={}, auth=(user, password),
                               timeout=10)  # fmt: skip
        answer.raise_for_status()
        out[f"prefect {kind}"] = answer.text
    return out
