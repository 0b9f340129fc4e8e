"""An invalid configuration fails at start and names the file, the key and the reason."""

from __future__ import annotations

import importlib.machinery
import logging
import subprocess
import sys
import types
from pathlib import Path

import pytest

from cli_process import run_cli
from modelwire.app.config import EMBEDDED_MODEL, load_config
from modelwire.core.settings import OTLP_EXPORTER, ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "modelwire.toml"
    path.write_text(text)
    return path


def test_full_config_loads(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            """
[server]
host = "0.0.0.0"
port = 6000
grace_period_s = 3
blocking_threads = 3

[[models]]
name = "gemma-3-270m"
provider = "llamacpp"
context_length = 1024
max_concurrency = 2
max_queue = 5
""",
        )
    )
    assert (config.server.host, config.server.port, config.server.grace_period_s) == (
        "0.0.0.0",
        6000,
        3.0,
    )
    model = config.models[0]
    assert (
        model.name,
        model.provider,
        model.context_length,
        model.max_concurrency,
        model.max_queue,
    ) == (
        "gemma-3-270m",
        "llamacpp",
        1024,
        2,
        5,
    )


def test_no_models_means_the_embedded_default(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[server]\nport = 7000\n"))
    assert [m.name for m in config.models] == [EMBEDDED_MODEL]


def test_a_config_file_means_one_process_unless_asked(tmp_path: Path) -> None:
    """Per-model limits are per process: a default of one process per CPU multiplied them
    silently."""
    assert load_config(write(tmp_path, "[server]\nport = 7000\n")).server.processes == 1
    assert load_config(write(tmp_path, "[server]\nprocesses = 3\n")).server.processes == 3


def test_limits_are_read_from_their_table(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            "[limits]\nmax_messages = 10\nmax_request_chars = 99\nmax_stop_strings = "
            "2\nmax_stop_chars = 5\n",
        )
    )
    assert (
        config.limits.max_messages,
        config.limits.max_request_chars,
        config.limits.max_stop_strings,
        config.limits.max_stop_chars,
    ) == (10, 99, 2, 5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[server]\nport = "x"\n', r"server\.port: must be an integer, got str"),
        ("[server]\nport = -1\n", r"server\.port: must be at least 0, got -1"),
        ('[server]\nhots = "x"\n', r"server\.hots: is not a known key"),
        ('[[models]]\nprovider = "llamacpp"\n', r"models\[0\]\.name: is required"),
        (
            '[[models]]\nname = "a"\nprovider = "llamacpp"\nmax_concurrency = 0\n',
            r"models\[0\]\.max_concurrency: must be at least 1",
        ),
        (
            '[[models]]\nname = "a"\nprovider = "llamacpp"\n[[models]]\nname = "a"\nprovider = '
            '"llamacpp"\n',
            r"models\[0\]\.deployment: model name 'a' is configured 2 times",
        ),
        ("[server\n", r"not valid TOML"),
        ("models = 3\n", r"models: must be an array, got int"),
        (
            '[server]\nblocking_threads = 2\n[[models]]\nname = "a"\nprovider = '
            '"llamacpp"\nmax_concurrency = 2\n',
            r"server\.blocking_threads: must exceed the local models' max_concurrency in all \(2\)",
        ),
        ("[limits]\nmax_messages = 0\n", r"limits\.max_messages: must be at least 1"),
        (
            '[[models]]\nname = "a"\nprovider = "echo"\nestimate_margin = 1.0\n',
            r"models\[0\]\.estimate_margin: must be less than 1.0, got 1.0",
        ),
        ("[limits]\nmax_stops = 3\n", r"limits\.max_stops: is not a known key"),
        (
            '[registry]\netcd = "etcd://h:2379/p?ttl=nan"\n',
            r"registry\.etcd: 'etcd://h:2379/p\?ttl=nan': ttl must be from 2 to 3600 seconds, got "
            r"'nan'",
        ),
        (
            '[registry]\netcd = "etcd://h:2379/p?ttl=inf"\n',
            r"registry\.etcd: .*ttl must be from 2 to 3600 seconds, got 'inf'",
        ),
        ('[registry]\netcd = "etcd://h:2379/p?ttl=1"\n', r"registry\.etcd: .*got '1'"),
        ('[registry]\netcd = "etcd://h/p"\n', r"registry\.etcd: 'h' is not HOST:PORT"),
        (
            '[registry]\ncontroller = "nohostport"\n',
            r"registry\.controller: 'nohostport' is not HOST:PORT",
        ),
        (
            '[registry]\ncontroller = "h:99999"\n',
            r"registry\.controller: 'h:99999' is not HOST:PORT",
        ),
        ('[registry]\ncontroller = "x:1:2"\n', r"registry\.controller: 'x:1:2' is not HOST:PORT"),
        (
            '[registry]\ncontroller = "http://[::1"\n',
            r"registry\.controller: 'http://\[::1' is not HOST:PORT",
        ),
        (
            '[observability]\notlp_endpoint = "http://c:4317"\n',
            r"observability\.otlp_endpoint: has no effect without tracing = true",
        ),
        (
            "[server]\nmax_connection_age_grace_s = 3\n",
            r"server\.max_connection_age_grace_s: has no effect without max_connection_age_s",
        ),
    ],
)
def test_invalid_config_names_file_key_and_reason(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as raised:
        load_config(path)
    assert str(raised.value).startswith(f"{path}: ")


def test_serve_refuses_unknown_provider_and_provider_keys_at_start(tmp_path: Path) -> None:
    bad_provider = write(tmp_path, '[[models]]\nname = "a"\nprovider = "openia"\n')
    result = run_cli(
        "serve", "--config", str(bad_provider), "--port", "0", "--processes", "1", timeout=120
    )
    assert result.returncode == 2
    assert f"{bad_provider}: models[0].provider: unknown provider 'openia'" in result.stderr
    assert "Traceback" not in result.stderr

    typo = tmp_path / "typo.toml"
    typo.write_text('[[models]]\nname = "a"\nprovider = "llamacpp"\nn_thread = 2\n')
    result = run_cli("serve", "--config", str(typo), "--port", "0", "--processes", "1", timeout=120)
    assert result.returncode == 2
    assert f"{typo}: models[0].n_thread: is not a known key" in result.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.toml")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("certs")
    subprocess.run(
        [str(Path(__file__).resolve().parent.parent / "scripts" / "make_certs.sh"), str(directory)],
        check=True,
        capture_output=True,
    )
    return directory


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            '[tls]\ncert_file = "{d}/server.pem"\nkey_file = "{d}/client.key"\n',
            r"tls\.key_file: .*client\.key is not the private key of the certificate in "
            r".*server\.pem",
        ),
        (
            '[tls]\ncert_file = "{d}/server.pem"\nkey_file = "{d}/server.pem"\n',
            r"tls\.key_file: .*is not the private key",
        ),
        (
            '[tls]\ncert_file = "{d}/server.pem"\nkey_file = "{d}/server.key"\nclient_ca_file = '
            '"{d}/server.key"\n',
            r"tls\.client_ca_file: .*server\.key holds no PEM certificate",
        ),
        (
            '[registry]\ncontroller = "h:1"\n[registry.tls]\nca_file = "{d}/ca.pem"\ncert_file = '
            '"{d}/client.pem"\nkey_file = "{d}/server.key"\n',
            r"registry\.tls\.key_file: .*is not the private key",
        ),
    ],
)
def test_tls_files_are_checked_at_start(
    tmp_path: Path, certs: Path, section: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, section.format(d=certs)))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--registry", "etcd://127.0.0.1:2379/mw?ttl=inf"],
            "--registry: 'etcd://127.0.0.1:2379/mw?ttl=inf': ttl must be from 2 to 3600 seconds",
        ),
        (["--controller", "nohost"], "--controller: 'nohost' is not HOST:PORT"),
        (["--port", "70000"], "--port: must be at most 65535, got 70000"),
        (["--weight", "0"], "--weight: must be at least 1, got 0"),
    ],
)
def test_bad_flags_stop_serve_before_any_model_loads(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    """One line naming the flag, from the command line, before the embedded model is loaded."""
    result = run_cli("serve", *flags, timeout=120)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"modelwire: invalid configuration: {message}"), line


@pytest.mark.parametrize(
    "where", [["--controller", "127.0.0.1:1"], ["--registry", "etcd://127.0.0.1:1/mw"]]
)
def test_instances_with_its_registry_down_prints_one_line(where: list[str]) -> None:
    result = run_cli("instances", *where, "--timeout", "2", timeout=60)
    assert result.returncode == 1 and result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"modelwire: cannot read the instances from {where[1]}: "), line


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[registry]\ncontroller = "c:1"\n[gateway.workers]\ntoken_env = '
            '"MW_TEST_GATEWAY_TOKEN"\n',
            r"gateway\.workers: .*set tls\.ca_file",
        ),
        (
            '[registry]\ncontroller = "c:1"\n[gateway.workers]\nforward_authorization = '
            "true\n[gateway.workers.tls]\n",
            r"gateway\.workers: .*set tls\.ca_file",
        ),
    ],
)
def test_credentials_go_to_workers_only_when_they_are_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, message: str
) -> None:
    """Workers are whatever was registered: a gateway's own token, or its callers' forwarded ones,
    would go to any registrant over plaintext or TLS checked only against public roots."""
    from modelwire.app.config import load_gateway_config

    monkeypatch.setenv("MW_TEST_GATEWAY_TOKEN", "t" * 20)
    with pytest.raises(ConfigError, match=message):
        load_gateway_config(write(tmp_path, text))
    waived = text.replace(
        "[gateway.workers]\n", "[gateway.workers]\nallow_unverified_credentials = true\n"
    )
    assert load_gateway_config(write(tmp_path, waived)).gateway.workers.allow_unverified_credentials


def test_text_logs_keep_every_call_field_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from modelwire.observe.call_record import begin_call
    from modelwire.observe.logs import configure_logging, log_call

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging("INFO", "text")
    try:
        record = begin_call("/modelwire.v1.ModelWorker/Generate", "req-7")
        record.model = 'forged\n{"level": "ERROR"}'
        log_call(record)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    [line] = capsys.readouterr().err.strip().splitlines()
    assert (
        "request_id=req-7 method=/modelwire.v1.ModelWorker/Generate" in line and "code=OK" in line
    )
    assert 'model="forged\\n{\\"level\\": \\"ERROR\\"}"' in line


def test_a_loopback_address_for_a_registry_on_another_host_is_refused_before_loading() -> None:
    """The worker would register 127.0.0.1:PORT with a controller elsewhere: whoever dials that
    reaches their own machine. Refused at once (the embedded model was not loaded: no llama.cpp
    line), with the ways out named."""
    result = run_cli("serve", "--controller", "192.0.2.10:50050", "--port", "50999", timeout=120)
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(
        "modelwire: cannot start: the worker would register 127.0.0.1:50999 with 192.0.2.10:50050"
    )
    assert "--advertise" in line and "allow_loopback" in line


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (
            'headers = { "Bad Header" = "x" }',
            "models[0].headers: 'Bad Header' is not an HTTP header name",
        ),
        (
            'headers = { "X-Ok" = "a\\r\\nInjected: 1" }',
            "models[0].headers: the value of 'X-Ok' holds a line break or NUL",
        ),
        ("max_retries = 11", "models[0].max_retries: must be at most 10, got 11"),
    ],
)
def test_provider_keys_that_would_misbehave_stop_serve(
    tmp_path: Path, keys: str, message: str
) -> None:
    path = write(
        tmp_path, f'[[models]]\nname = "a"\nprovider = "openai"\ncontext_length = 10\n{keys}\n'
    )
    result = run_cli("serve", "--config", str(path), "--port", "0", timeout=120)
    assert result.returncode == 2, result.stderr
    assert f"{path}: {message}" in result.stderr and "Traceback" not in result.stderr


TRACING = '[observability]\ntracing = true\notlp_endpoint = "http://127.0.0.1:4317"\n'


@pytest.mark.parametrize("loader", ["load_config", "load_controller_config", "load_gateway_config"])
def test_otlp_endpoint_without_the_exporter_is_refused_when_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loader: str
) -> None:
    """Refused with the configuration (not after the models load), with an install step that works
    from a checkout, where `pip install 'modelwire[tracing]'` cannot (modelwire is not
    published)."""
    from modelwire.app import config

    monkeypatch.setitem(sys.modules, OTLP_EXPORTER, None)  # importing it fails, as if not installed
    path = write(tmp_path, TRACING)
    with pytest.raises(ConfigError) as raised:
        getattr(config, loader)(path)
    assert str(raised.value) == (
        f"{path}: observability.otlp_endpoint: needs the OTLP exporter (the `tracing` extra), "
        "which is not installed: from the checkout, `.venv/bin/pip install -e '.[tracing]'`"
    )


def test_otlp_endpoint_with_the_exporter_installed_is_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter = types.ModuleType(OTLP_EXPORTER)
    exporter.__spec__ = importlib.machinery.ModuleSpec(OTLP_EXPORTER, None)
    monkeypatch.setitem(sys.modules, OTLP_EXPORTER, exporter)
    assert (
        load_config(write(tmp_path, TRACING)).observability.otlp_endpoint == "http://127.0.0.1:4317"
    )
