"""Where settings come from: precedence of flags over variables over defaults, the parser, the README table."""

from dataclasses import fields
from pathlib import Path

from tts_server.config import ServerConfig, env_of, flag_of
from tts_server.config_sources import build_parser, load_config, settings_markdown


def test_command_line_wins_over_environment_over_defaults():
    env = {"TTS_MODEL": "/env/model", "TTS_MAX_NUM_SEQS": "8", "TTS_PORT": "9000", "TTS_FAIR_QUEUE": "yes"}
    config = load_config(["--max-num-seqs", "4", "--no-fair-queue"], env)
    assert config.model == "/env/model" and config.max_num_seqs == 4 and config.port == 9000
    assert config.fair_queue is False and config.queue_timeout == 60.0 and config.host == "0.0.0.0"
    assert load_config([], env).fair_queue is True


def test_every_setting_has_a_flag_an_env_variable_help_and_a_readme_row():
    parser = build_parser()
    flags = {a.dest: a for a in parser._actions}
    table = settings_markdown()
    for f in fields(ServerConfig):
        assert f.name in flags and flags[f.name].help and f.metadata["help"]
        assert f"`{flag_of(f.name)}`" in table and f"`{env_of(f.name)}`" in table
    for required in (
        "model", "device", "max_num_seqs", "max_concurrent_connections", "queue_timeout", "fair_queue",
        "voices_dir", "host", "port", "api_key", "admin_key", "log_level", "max_body_bytes",
        "max_prompt_seconds", "max_text_chars", "shutdown_grace", "default_max_generate_length",
        "max_num_batched_tokens", "max_model_len", "num_kv_blocks", "gpu_memory_utilization",
        "max_loras", "max_lora_rank", "engine_threads", "dtype",
    ):  # fmt: skip
        assert required in flags


def test_readme_settings_table_matches_the_code():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("<!-- settings:begin -->\n", 1)[1].split("\n<!-- settings:end -->", 1)[0]
    assert table.strip() == settings_markdown().strip(), "README settings table is stale: paste settings_markdown()"
