"""Command line -> Settings: Triton's flag names, repeatable repositories, bool flags and refusals."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from v2server.cli import parse_settings
from v2server.settings import DEFAULT_MAX_MESSAGE_SIZE, Settings

REPO = ["--model-repository", "/models"]


def test_defaults_are_the_settings_defaults() -> None:
    assert parse_settings(REPO) == Settings(model_repositories=(Path("/models"),))


@pytest.mark.parametrize(
    ("argv", "field", "value"),
    [
        (["--server-name", "triton"], "server_name", "triton"),
        (["--http-address=127.0.0.1"], "http_address", "127.0.0.1"),
        (["--http-port", "9000"], "http_port", 9000),
        (["--grpc-address", "::1"], "grpc_address", "::1"),
        (["--grpc-port=9001"], "grpc_port", 9001),
        (["--metrics-port", "9002"], "metrics_port", 9002),
        (["--log-verbose=1"], "log_verbose", 1),
        (["--grpc-max-message-size", "1048576"], "grpc_max_message_size", 1048576),
        (["--exit-timeout-secs", "2.5"], "shutdown_grace_seconds", 2.5),
        (["--model-control-mode", "explicit"], "model_control_mode", "explicit"),
        (["--model-control-mode=explicit", "--load-model", "a", "--load-model=b"], "load_models", ("a", "b")),
        (["--allow-http=false"], "allow_http", False),
        (["--allow-grpc", "0"], "allow_grpc", False),
        (["--allow-metrics=No"], "allow_metrics", False),
        (["--strict-readiness=off"], "strict_readiness", False),
        (["--strict-model-config", "false"], "strict_model_config", False),
        (["--exit-on-error"], "exit_on_error", True),
        (["--exit-on-error=TRUE"], "exit_on_error", True),
        (["--exit-on-error", "on", "--allow-http", "yes"], "exit_on_error", True),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_triton_flags(argv: list[str], field: str, value: object) -> None:
    settings = parse_settings([*REPO, *argv])
    assert getattr(settings, field) == value
    assert getattr(Settings(), field) != value


@pytest.mark.parametrize("flag", ["--model-repository", "--model-store"])
def test_repositories_are_repeatable_under_either_name(flag: str) -> None:
    argv = [flag, "/a", f"{flag}=/b", "--model-store", "/c", "--model-repository=/d"]
    assert parse_settings(argv).model_repositories == (Path("/a"), Path("/b"), Path("/c"), Path("/d"))


def test_triton_tuning_flags_are_accepted_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="v2server"):
        settings = parse_settings(
            ["--backend-config", "pytorch,x=y", *REPO, "--pinned-memory-pool-byte-size=0", "--grpc-port", "1234"]
        )
    assert settings.model_repositories == (Path("/models"),) and settings.grpc_port == 1234
    warned = [record.getMessage() for record in caplog.records]
    assert warned == [
        "ignoring Triton tuning flag --backend-config: it has no effect on this server",
        "ignoring Triton tuning flag --pinned-memory-pool-byte-size: it has no effect on this server",
    ]


@pytest.mark.parametrize(
    "flag",
    # security-relevant Triton flags we do not implement, a typo, and a prefix of a real flag
    ["--http-restricted-api=model-repository:k=v", "--grpc-restricted-protocol=admin:k=v", "--allow-sagemaker=true",
     "--grcp-use-ssl=true", "--grpc-use"],
)
def test_any_other_unknown_flag_stops_the_server(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        parse_settings([*REPO, flag])
    assert caught.value.code == 2
    assert f"unrecognized arguments: {flag}" in capsys.readouterr().err


def test_tls_flags(tmp_path: Path) -> None:
    settings = parse_settings([*REPO, "--grpc-use-ssl-mutual=true", "--grpc-server-cert=c", "--grpc-server-key=k",
                               "--grpc-root-cert=ca", "--http-ssl-cert=hc", "--http-ssl-key=hk",
                               "--http-ssl-client-ca=hca", "--metrics-api-key-required"])
    assert settings.grpc_use_ssl and settings.grpc_use_ssl_mutual  # mutual implies TLS
    assert (settings.grpc_server_cert, settings.grpc_server_key, settings.grpc_root_cert) == (
        Path("c"), Path("k"), Path("ca"))
    assert (settings.http_ssl_cert, settings.http_ssl_key, settings.http_ssl_client_ca) == (
        Path("hc"), Path("hk"), Path("hca"))
    assert settings.metrics_api_key_required
    gateway = parse_settings(["gateway", "--grpc-target=h:1", "--grpc-target-root-cert=ca",
                              "--grpc-target-client-cert=c", "--grpc-target-client-key=k"])
    assert gateway.grpc_target_root_cert == Path("ca") and gateway.grpc_target_client_key == Path("k")


def test_connection_limit_flags() -> None:
    settings = parse_settings([*REPO, "--http-header-timeout-secs=5", "--http-body-timeout-secs=7",
                               "--grpc-max-concurrent-streams=3", "--grpc-http2-max-ping-strikes=0",
                               "--grpc-keepalive-permit-without-calls"])
    assert settings.http_idle_timeout_seconds == 5 and settings.http_body_timeout_seconds == 7
    assert settings.grpc_max_concurrent_streams == 3 and settings.grpc_http2_max_ping_strikes == 0
    assert settings.grpc_keepalive_permit_without_calls


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "--model-repository (or --model-dir) is required"),
        ([*REPO, "--load-model", "a"], "--load-model needs --model-control-mode=explicit"),
        ([*REPO, "--model-control-mode=none", "--load-model=a"], "--load-model needs --model-control-mode=explicit"),
        ([*REPO, "--model-control-mode", "poll", "--repository-poll-secs=0"], "--repository-poll-secs must be positive"),
        ([*REPO, "--model-control-mode", "auto"], "invalid choice: 'auto'"),
        ([*REPO, "--allow-http=maybe"], "expected true or false, got 'maybe'"),
        ([*REPO, "--grpc-port", "high"], "invalid int value: 'high'"),
        ([*REPO, "--grpc-max-message-size=0"], f"--grpc-max-message-size must be in 1..{DEFAULT_MAX_MESSAGE_SIZE}"),
        (
            [*REPO, f"--grpc-max-message-size={DEFAULT_MAX_MESSAGE_SIZE + 1}"],
            f"--grpc-max-message-size must be in 1..{DEFAULT_MAX_MESSAGE_SIZE}",
        ),
        # TLS half set: never a silent fallback to plaintext
        ([*REPO, "--grpc-use-ssl=true"], "--grpc-use-ssl needs --grpc-server-cert and --grpc-server-key"),
        ([*REPO, "--grpc-use-ssl", "--grpc-server-cert=c"], "--grpc-use-ssl needs --grpc-server-cert and"),
        ([*REPO, "--grpc-use-ssl-mutual", "--grpc-server-cert=c", "--grpc-server-key=k"],
         "--grpc-use-ssl-mutual needs --grpc-root-cert"),
        ([*REPO, "--grpc-server-cert=c", "--grpc-server-key=k"], "--grpc-server-cert is set but --grpc-use-ssl is not"),
        ([*REPO, "--http-ssl-cert=c"], "--http-ssl-cert and --http-ssl-key go together"),
        ([*REPO, "--http-ssl-client-ca=ca"], "--http-ssl-client-ca needs --http-ssl-cert"),
        ([*REPO, "--grpc-target-root-cert=ca"], "--grpc-target-* TLS flags are for gateway mode"),
        (["gateway", "--grpc-target=h:1", "--grpc-target-client-cert=c"],
         "--grpc-target-client-cert and --grpc-target-client-key go together"),
        ([*REPO, "--http-idle-timeout-secs=0"], "--http-idle-timeout-secs must be positive"),
        ([*REPO, "--grpc-max-concurrent-streams=0"], "--grpc-max-concurrent-streams must be positive"),
        ([*REPO, "--http-max-body-size=-1"], "--http-max-body-size must be positive"),
        ([*REPO, "--http-body-timeout-secs=0"], "--http-body-timeout-secs must be positive"),
        ([*REPO, "--model-name=m"], "--model-name needs --model-dir"),
        (["gateway"], "gateway mode needs --grpc-target HOST:PORT"),
        ([*REPO, "--grpc-target=h:1"], "--grpc-target is for gateway mode"),
        (["gateway", "--grpc-target=h:1", "--grpc-use-ssl"], "a gateway uses --grpc-target-ssl"),
        ([*REPO, "--metrics-config=histogram_latency_buckets=1,x"], "histogram buckets: 'x' is not a number"),
    ],
    ids=[
        "no-repository", "load-model-default-mode", "load-model-none-mode", "poll-interval", "unknown-mode", "bad-bool",
        "bad-int", "message-size-0", "message-size-too-big", "grpc-ssl-no-files", "grpc-ssl-no-key",
        "mutual-no-root", "cert-without-ssl", "http-cert-no-key", "client-ca-alone", "target-tls-not-gateway",
        "target-client-cert-alone", "idle-timeout", "streams", "body-size", "body-timeout", "model-name-alone",
        "gateway-no-target", "target-not-gateway", "gateway-grpc-ssl", "bad-buckets",
    ],
)
def test_refused_command_lines(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        parse_settings(argv)
    assert caught.value.code == 2
    assert message in capsys.readouterr().err


def test_environment_variables_set_defaults_and_the_command_line_wins(tmp_path: Path) -> None:
    env = {"V2SERVER_HTTP_PORT": "8080", "V2SERVER_GRPC_PORT": "9000", "V2SERVER_ALLOW_METRICS": "false",
           "V2SERVER_MODEL_REPOSITORIES": f"{tmp_path},/other", "V2SERVER_LOAD_MODELS": "a, b",
           "V2SERVER_MODEL_CONTROL_MODE": "explicit"}
    settings = parse_settings([], env)
    assert (settings.http_port, settings.grpc_port, settings.allow_metrics) == (8080, 9000, False)
    assert settings.model_repositories == (tmp_path, Path("/other"))
    assert settings.load_models == ("a", "b")
    assert parse_settings(["--http-port", "7000"], env).http_port == 7000


def test_bad_environment_value_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_settings(["--model-repository", "x"], {"V2SERVER_HTTP_PORT": "eighty"})
    assert "V2SERVER_HTTP_PORT='eighty'" in capsys.readouterr().err


def test_model_dir_single_model_or_repository(tmp_path: Path) -> None:
    model = tmp_path / "mnt" / "models"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text("")
    single = parse_settings(["--model-dir", str(model), "--model-name", "resnet"], {})
    assert single.single_models == (("resnet", model),) and single.model_repositories == ()
    unnamed = parse_settings(["--model-dir", str(model)], {})
    assert unnamed.single_models == (("models", model),)
    repository = parse_settings(["--model-dir", str(tmp_path / "mnt")], {})
    assert repository.model_repositories == (tmp_path / "mnt",) and repository.single_models == ()


def test_event_loop_choice(capsys: pytest.CaptureFixture[str]) -> None:
    import uvloop

    from v2server.server import _loop_factory

    assert parse_settings(["--model-repository", "x"], {}).event_loop == "auto"
    assert parse_settings(["--model-repository", "x", "--event-loop", "asyncio"], {}).event_loop == "asyncio"
    assert _loop_factory("auto") is uvloop.new_event_loop and _loop_factory("uvloop") is uvloop.new_event_loop
    assert _loop_factory("asyncio") is None
    with pytest.raises(SystemExit):
        parse_settings(["--model-repository", "x", "--event-loop", "trio"], {})
    assert "invalid choice: 'trio'" in capsys.readouterr().err


def test_environment_names_follow_the_flags_and_the_old_names_still_work(tmp_path: Path) -> None:
    new = {"V2SERVER_MODEL_REPOSITORY": f"{tmp_path},/other", "V2SERVER_LOAD_MODEL": "a,b",
           "V2SERVER_CORS_ALLOW_ORIGIN": "https://x.example,*", "V2SERVER_API_KEY": "k1,k2",
           "V2SERVER_MODEL_CONTROL_MODE": "explicit"}
    old = {"V2SERVER_MODEL_REPOSITORIES": f"{tmp_path},/other", "V2SERVER_LOAD_MODELS": "a,b",
           "V2SERVER_CORS_ALLOW_ORIGINS": "https://x.example,*", "V2SERVER_API_KEYS": "k1,k2",
           "V2SERVER_MODEL_CONTROL_MODE": "explicit"}
    for env in (new, old):
        settings = parse_settings([], env)
        assert settings.model_repositories == (tmp_path, Path("/other"))
        assert settings.load_models == ("a", "b")
        assert settings.cors_allow_origins == ("https://x.example", "*")
        assert settings.api_keys == ("k1", "k2")


def test_a_repeatable_flag_on_the_command_line_replaces_its_environment() -> None:
    env = {"V2SERVER_MODEL_REPOSITORY": "/env", "V2SERVER_CORS_ALLOW_ORIGIN": "*"}
    settings = parse_settings(["--model-repository=/cli", "--cors-allow-origin", "https://x.example"], env)
    assert settings.model_repositories == (Path("/cli"),)
    assert settings.cors_allow_origins == ("https://x.example",)


def test_api_keys_from_flags_environment_and_file_add_up(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("file-key  # a comment\n\n# only a comment\nflag-key\n")
    settings = parse_settings([*REPO, "--api-key", "flag-key", f"--api-keys-file={keys_file}"],
                              {"V2SERVER_API_KEYS": "env-a, env-b,"})
    assert settings.api_keys == ("flag-key", "env-a", "env-b", "file-key")
    from_env_file = parse_settings(REPO, {"V2SERVER_API_KEYS_FILE": str(keys_file)})
    assert from_env_file.api_keys == ("file-key", "flag-key")


def test_the_given_environment_is_the_only_one_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("V2SERVER_API_KEYS", "from-the-process")
    monkeypatch.setenv("V2SERVER_HTTP_PORT", "1234")
    isolated = parse_settings(REPO, {})
    assert isolated.api_keys == () and isolated.http_port == 8000
    process = parse_settings(REPO)
    assert process.api_keys == ("from-the-process",) and process.http_port == 1234


def test_missing_api_keys_file_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        parse_settings([*REPO, "--api-keys-file", str(tmp_path / "absent")], {})
    assert caught.value.code == 2
    assert "--api-keys-file: " in capsys.readouterr().err


def test_metrics_config_sets_the_latency_buckets(caplog: pytest.LogCaptureFixture) -> None:
    flags = parse_settings([*REPO, "--metrics-config", "histogram_latency_buckets=500,100,1000"], {})
    assert flags.latency_buckets_us == (100.0, 500.0, 1000.0)
    # values hold commas, so the variable separates them with semicolons
    with caplog.at_level(logging.WARNING, logger="v2server"):
        env = parse_settings(REPO, {"V2SERVER_METRICS_CONFIG": "histogram_latency_buckets=100,200;summary=x"})
    assert env.latency_buckets_us == (100.0, 200.0)
    assert [record.getMessage() for record in caplog.records] == ["ignoring unsupported --metrics-config summary=x"]


@pytest.mark.parametrize(("given", "meant"), [("json", "json"), ("text", "text"), ("default", "text"),
                                              ("ISO8601", "ISO8601")])
def test_log_format_takes_tritons_names(given: str, meant: str) -> None:
    assert parse_settings([*REPO, "--log-format", given], {}).log_format == meant
    assert parse_settings(REPO, {"V2SERVER_LOG_FORMAT": given}).log_format == meant


def test_settings_checks_apply_to_environment_values(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_settings(REPO, {"V2SERVER_HTTP_MAX_BODY_SIZE": "0"})
    assert "--http-max-body-size must be positive" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_settings(REPO, {"V2SERVER_GRPC_USE_SSL": "true"})
    assert "--grpc-use-ssl needs --grpc-server-cert and --grpc-server-key" in capsys.readouterr().err


def test_gateway_mode_needs_no_repository() -> None:
    settings = parse_settings(["gateway", "--grpc-target", "core:8001", "--grpc-target-ssl"], {})
    assert settings.grpc_target == "core:8001" and settings.grpc_target_ssl
    assert settings.model_repositories == () and settings.single_models == ()
