"""Reliability under faults and on the transport: SIGKILL, SIGTERM with a stuck job, exclusive ports,
TLS and mutual TLS, token files, and receipts without local paths.

Servers run in subprocesses where a signal is the point, in-process otherwise; loopback only, every
wait bounded. Run with ``-s`` to see the figures the README's "Reliability" section quotes.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")

from service_setup import QUESTION, QUESTION_2  # noqa: E402

from gradalign_client import Client, GradalignError, tls_credentials  # noqa: E402
from gradalign_server import TlsFiles, create_server  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in (".", "server", "client", "tests"))}


def _listening_port(proc: subprocess.Popen, lines: list[str], timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    for line in proc.stderr:
        lines.append(line)
        if '"grpc_listening"' in line:
            return json.loads(line)["port"]
        assert time.monotonic() < deadline, "".join(lines)
    raise AssertionError("the server exited before listening:\n" + "".join(lines))


def _serve(config: Path, db: Path) -> tuple[subprocess.Popen, int, list[str]]:
    cmd = [sys.executable, "-m", "gradalign_server", "--config", str(config), "--port", "0", "--metrics-port", "-1"]
    proc = subprocess.Popen(cmd + ["--db", str(db)], stderr=subprocess.PIPE, text=True, env=ENV)
    lines: list[str] = []
    return proc, _listening_port(proc, lines), lines


def _config(tiny_model_dir, tmp_path) -> Path:
    config = tmp_path / "c.toml"
    config.write_text(
        f'[student]\nmodel = "{tiny_model_dir}"\ndevice = "cpu"\n'
        '[[teachers]]\nname = "demo"\ncontext = "correct_demo"\n'
        "[sampling]\nmax_new_tokens = 8\n[rollouts]\nnum_rollouts = 3\nnodes_per_path = 2\ncandidate_top_k = 1\n"
        "continuations = 2\n"
    )
    return config


def test_sigkill_during_a_build_then_restart_keeps_finished_work(tiny_model_dir, tmp_path):
    config, db = _config(tiny_model_dir, tmp_path), tmp_path / "store.sqlite"
    proc, port, _ = _serve(config, db)
    try:
        with Client(f"127.0.0.1:{port}", timeout=60) as client:
            client.wait_ready(timeout=120)
            done = client.build_tree(QUESTION_2, seed=5)
            report = client.score_teacher([done.tree_id])
            big = {"num_rollouts": 64, "max_new_tokens": 200, "nodes_per_path": 8, "continuations": 8}
            threading.Thread(
                target=lambda: _swallow(lambda: client.build_tree(QUESTION, settings=big, seed=9)), daemon=True
            ).start()
            time.sleep(1.5)  # the big build is running and the store is open for writing
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    proc, port, _ = _serve(config, db)
    try:
        with Client(f"127.0.0.1:{port}", timeout=60) as client:
            client.wait_ready(timeout=120)
            again = client.build_tree(QUESTION_2, seed=5)
            assert again.tree_id == done.tree_id and again.summary.cache_hit
            cached = client.score_teacher([done.tree_id])
            assert cached.cache_hit and cached.ranking == report.ranking
        print("\n[reliability] SIGKILL during a build: integrity_check ok, the finished tree and report intact")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def _swallow(fn) -> None:
    try:
        fn()
    except GradalignError:
        pass


def test_sigterm_with_a_stuck_job_exits_within_the_grace_period_plus_a_few_seconds(tiny_model_dir, tmp_path):
    grace = 1.0
    script = ROOT / "tests" / "stuck_server.py"
    cmd = [sys.executable, str(script), str(tiny_model_dir), str(tmp_path / "s.sqlite"), str(grace)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=ENV)
    lines: list[str] = []
    try:
        port = _listening_port(proc, lines)
        client = Client(f"127.0.0.1:{port}", timeout=300)
        client.wait_ready(timeout=120)
        threading.Thread(target=lambda: _swallow(lambda: client.build_tree(QUESTION)), daemon=True).start()
        for line in proc.stderr:
            lines.append(line)
            if "stuck_build_started" in line:
                break
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        seconds = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    rest = proc.stderr.read()
    assert seconds < grace + 5.0 + 5.0, rest
    assert "shutdown_left_a_running_job" in rest or "shutdown_watchdog" in rest, rest
    print(f"\n[reliability] SIGTERM with a job stuck in the engine (grace {grace:g} s): exited after {seconds:.1f} s")


def test_a_second_server_on_the_same_port_fails_clearly(service_engine):
    server, port = create_server(service_engine, "127.0.0.1:0")
    try:
        with pytest.raises(OSError, match=rf"cannot listen on 127.0.0.1:{port}: the port is in use"):
            create_server(service_engine, f"127.0.0.1:{port}")
    finally:
        server.stop(grace=0)


def test_serve_refuses_a_port_in_use_with_exit_code_2(tiny_model_dir, tmp_path, service_engine):
    server, port = create_server(service_engine, "127.0.0.1:0")
    try:
        config = _config(tiny_model_dir, tmp_path)
        cmd = [sys.executable, "-m", "gradalign_server", "--config", str(config), "--port", str(port)]
        proc = subprocess.run(cmd + ["--metrics-port", "-1"], capture_output=True, text=True, env=ENV, timeout=120)
        assert proc.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in proc.stderr
    finally:
        server.stop(grace=0)


def test_metrics_listen_on_the_grpc_host_by_default(service_engine):
    server, _ = create_server(service_engine, "127.0.0.1:0", metrics_port=0)
    try:
        metrics = server.metrics
        assert metrics.http_address == ("127.0.0.1", server.metrics_port)
    finally:
        server.stop(grace=0)


# ---------------------------------------------------------------- TLS
def _certificates(tmp_path: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, all signed by the CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    def issue(subject: str, key, issuer_name, issuer_key, *, ca=False, server=False):
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if server:
            import ipaddress

            alt = x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            )
            builder = builder.add_extension(alt, critical=False).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
        elif not ca:
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    files = {}
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = issue("gradalign test CA", ca_key, name("gradalign test CA"), ca_key, ca=True)
    for who, server in (("server", True), ("client", False)):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = issue(f"gradalign test {who}", key, ca.subject, ca_key, server=server)
        files[f"{who}.crt"] = cert.public_bytes(serialization.Encoding.PEM)
        files[f"{who}.key"] = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    files["ca.crt"] = ca.public_bytes(serialization.Encoding.PEM)
    paths = {}
    for file_name, data in files.items():
        paths[file_name] = tmp_path / file_name
        paths[file_name].write_bytes(data)
    return paths


def test_tls_serves_clients_that_trust_its_ca_and_refuses_plaintext(service_engine, tmp_path):
    pem = _certificates(tmp_path)
    tls = TlsFiles.read(pem["server.crt"], pem["server.key"])
    server, port = create_server(service_engine, "127.0.0.1:0", token="s3cret", tls=tls)
    try:
        with Client(f"127.0.0.1:{port}", token="s3cret", credentials=tls_credentials(pem["ca.crt"])) as client:
            assert client.health() == "SERVING" and client.list_models()
        with Client(f"127.0.0.1:{port}", token="s3cret", timeout=5) as plaintext:
            with pytest.raises(GradalignError) as err:
                plaintext.list_models()
            assert err.value.code == "UNAVAILABLE"
        with Client(f"127.0.0.1:{port}", token="s3cret", timeout=5, credentials=tls_credentials()) as untrusting:
            with pytest.raises(GradalignError) as err:
                untrusting.list_models()  # the system's roots do not know the test CA
            assert err.value.code == "UNAVAILABLE"
    finally:
        server.stop(grace=0)


def test_mutual_tls_requires_a_client_certificate_signed_by_the_ca(service_engine, tmp_path):
    pem = _certificates(tmp_path)
    tls = TlsFiles.read(pem["server.crt"], pem["server.key"], client_ca=pem["ca.crt"])
    server, port = create_server(service_engine, "127.0.0.1:0", tls=tls)
    try:
        with_cert = tls_credentials(pem["ca.crt"], pem["client.crt"], pem["client.key"])
        with Client(f"127.0.0.1:{port}", credentials=with_cert) as client:
            assert client.list_models()
        with Client(f"127.0.0.1:{port}", timeout=5, credentials=tls_credentials(pem["ca.crt"])) as anonymous:
            with pytest.raises(GradalignError) as err:
                anonymous.list_models()
            assert err.value.code == "UNAVAILABLE"
    finally:
        server.stop(grace=0)


def test_tls_files_that_are_missing_or_not_pem_are_named(tmp_path):
    (tmp_path / "x.crt").write_text("not a certificate")
    with pytest.raises(OSError, match="cannot read the TLS certificate .*nope.crt"):
        TlsFiles.read(tmp_path / "nope.crt", tmp_path / "x.crt")
    with pytest.raises(OSError, match="x.crt is not PEM"):
        TlsFiles.read(tmp_path / "x.crt", tmp_path / "x.crt")


def test_serve_reads_its_token_from_a_file_and_the_cli_client_too(tiny_model_dir, tmp_path):
    token = tmp_path / "token"
    token.write_text("from-a-file\n")
    config = _config(tiny_model_dir, tmp_path)
    cmd = [sys.executable, "-m", "gradalign_server", "--config", str(config), "--port", "0", "--metrics-port", "-1"]
    proc = subprocess.Popen(
        cmd + ["--db", str(tmp_path / "t.sqlite"), "--token-file", str(token)],
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        port = _listening_port(proc, [])
        with Client(f"127.0.0.1:{port}", token="from-a-file", timeout=30) as client:
            client.wait_ready(timeout=120)
        cli = [sys.executable, "-m", "gradalign_client.cli", "models", "--server", f"127.0.0.1:{port}"]
        ok = subprocess.run(cli + ["--token-file", str(token)], capture_output=True, text=True, env=ENV, timeout=60)
        assert ok.returncode == 0, ok.stderr
        env = {**ENV, "GRADALIGN_TOKEN": "wrong"}
        denied = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=60)
        assert denied.returncode != 0 and "UNAUTHENTICATED" in denied.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def test_receipts_show_digests_not_local_paths_unless_the_operator_opts_in(service_engine, tiny_model_dir):
    for expose in (False, True):
        server, port = create_server(service_engine, "127.0.0.1:0", expose_paths=expose)
        try:
            with Client(f"127.0.0.1:{port}") as client:
                text = json.dumps(client.receipt())
            assert (str(tiny_model_dir) in text) is expose
            assert service_engine.student.info.model_hash in text
        finally:
            server.stop(grace=0)
