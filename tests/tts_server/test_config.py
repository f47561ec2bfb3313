"""ServerConfig: derived limits, validation messages that name the setting, secrets kept out of messages."""

import pytest

from tts_server.config import ConfigError
from tts_server.config_sources import load_config


def test_derived_limits():
    config = load_config(["--model", "m", "--device", "cuda:0,cuda:1", "--max-num-seqs", "8"], {})
    assert config.device_list == ["cuda:0", "cuda:1"] and config.resolved_devices() == ["cuda:0", "cuda:1"]
    assert config.inference_slots == 16 and config.connection_cap == 32
    assert load_config(["--model", "m", "--max-concurrent-connections", "20"], {}).connection_cap == 20
    engine = config.engine_config()
    assert (engine.max_num_seqs, engine.max_model_len, engine.max_loras) == (8, 2048, 0)
    assert load_config(["--model", "m", "--voices-dir", ""], {}).voices_dir is None
    assert config.event_loop == "asyncio"
    assert load_config(["--model", "m", "--event-loop", "UVLoop"], {}).event_loop == "uvloop"
    graphs = load_config(["--model", "m", "--cuda-graph-timesteps", "10,5", "--enforce-eager"], {}).engine_config()
    assert graphs.cuda_graph_timesteps == (10, 5) and graphs.enforce_eager is True
    # Warm-up: on CUDA by default (None), off when asked; the kernel cache goes to the engine processes.
    assert engine.warm_up is None and engine.kernel_cache_dir is None
    cold = load_config(["--model", "m", "--no-warm-up"], {"TTS_KERNEL_CACHE_DIR": "/var/cache/k"}).engine_config()
    assert cold.warm_up is False and cold.kernel_cache_dir == "/var/cache/k"


def test_voice_admin_key_falls_back_to_the_api_key():
    assert load_config(["--model", "m", "--api-key", "a"], {}).voice_admin_key == "a"
    assert load_config(["--model", "m", "--api-key", "a", "--admin-key", "b"], {}).voice_admin_key == "b"
    assert load_config(["--model", "m"], {}).voice_admin_key is None


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        ([], {}, "--model"),
        (["--model", "m", "--max-num-seqs", "0"], {}, "--max-num-seqs"),
        (["--model", "m", "--max-num-seqs", "many"], {}, "--max-num-seqs"),
        (["--model", "m"], {"TTS_PORT": "http"}, "TTS_PORT"),
        (["--model", "m"], {"TTS_FAIR_QUEUE": "maybe"}, "TTS_FAIR_QUEUE"),
        (["--model", "m", "--port", "70000"], {}, "--port"),
        (["--model", "m", "--device", "tpu"], {}, "--device"),
        (["--model", "m", "--device", "auto,cpu"], {}, "--device"),
        (["--model", "m", "--dtype", "int8"], {}, "--dtype"),
        (
            ["--model", "m", "--max-num-seqs", "8", "--max-concurrent-connections", "4"],
            {},
            "--max-concurrent-connections",
        ),
        (["--model", "m", "--queue-timeout", "0"], {}, "--queue-timeout"),
        (["--model", "m", "--log-level", "loud"], {}, "--log-level"),
        (["--model", "m"], {"TTS_EVENT_LOOP": "trio"}, "TTS_EVENT_LOOP"),
        (["--model", "m", "--gpu-memory-utilization", "1.5"], {}, "--gpu-memory-utilization"),
        (["--model", "m", "--max-num-batched-tokens", "2"], {}, "--max-num-batched-tokens"),
        (["--model", "m", "--shutdown-grace", "-1"], {}, "--shutdown-grace"),
        (["--model", "m", "--stream-write-seconds", "-0.5"], {}, "--stream-write-seconds"),
        (["--model", "m"], {"TTS_STREAM_LEAD_SECONDS": "inf"}, "TTS_STREAM_LEAD_SECONDS"),
        (["--model", "m", "--default-max-generate-length", "0"], {}, "--default-max-generate-length"),
        (["--model", "m", "--api-key", " padded "], {}, "--api-key"),
        (["--model", "m", "--cuda-graph-timesteps", "10,0"], {}, "--cuda-graph-timesteps"),
        (["--model", "m", "--cuda-graph-timesteps", "ten"], {}, "--cuda-graph-timesteps"),
    ],
)
def test_errors_name_the_setting(argv, env, named):
    with pytest.raises(ConfigError) as info:
        load_config(argv, env)
    assert named in str(info.value)


def test_secrets_never_appear_in_messages_or_dumps():
    with pytest.raises(ConfigError) as info:
        load_config(["--model", "m", "--api-key", " s3cret "], {})
    assert "s3cret" not in str(info.value)
    config = load_config(["--model", "m", "--api-key", "s3cret", "--admin-key", "adm1n"], {})
    dump = repr(config.redacted())
    assert "s3cret" not in dump and "adm1n" not in dump and "***" in dump


def test_config_is_frozen():
    config = load_config(["--model", "m"], {})
    with pytest.raises(AttributeError):
        config.port = 1  # type: ignore[misc]


def test_the_audio_ring_setting_reaches_the_engine():
    assert load_config(["--model", "m"], {}).engine_config().audio_ring_slots == 4
    assert load_config(["--model", "m"], {"TTS_AUDIO_RING_SLOTS": "0"}).engine_config().audio_ring_slots == 0
    with pytest.raises(ConfigError, match="--audio-ring-slots"):
        load_config(["--model", "m", "--audio-ring-slots", "-1"], {})


def test_max_num_batched_tokens_defaults_to_the_devices_kind():
    """Unset (or ``auto``): 4096 positions per step on a GPU, 1024 on the CPU, never fewer than the slots."""
    cpu = load_config(["--model", "m", "--device", "cpu"], {})
    assert cpu.max_num_batched_tokens is None and cpu.engine_config().max_num_batched_tokens == 1024
    gpu = load_config(["--model", "m", "--device", "cuda:0"], {"TTS_MAX_NUM_BATCHED_TOKENS": "auto"})
    assert gpu.engine_config().max_num_batched_tokens == 4096
    wide = load_config(["--model", "m", "--device", "cuda", "--max-num-seqs", "8192"], {})
    assert wide.engine_config().max_num_batched_tokens == 8192
    given = load_config(["--model", "m", "--device", "cuda", "--max-num-batched-tokens", "512"], {})
    assert given.engine_config().max_num_batched_tokens == 512
    with pytest.raises(ConfigError, match="--max-num-batched-tokens must be >= --max-num-seqs, got 8"):
        load_config(["--model", "m", "--device", "cpu", "--max-num-batched-tokens", "8"], {})


def test_max_num_seqs_defaults_to_the_devices_kind():
    """Unset (or ``auto``): 128 slots per GPU, 16 on the CPU; a value given is kept on either."""
    cpu = load_config(["--model", "m", "--device", "cpu"], {})
    assert cpu.max_num_seqs is None and cpu.slots_per_engine == 16 and cpu.engine_config().max_num_seqs == 16
    gpus = load_config(["--model", "m", "--device", "cuda:0,cuda:1"], {"TTS_MAX_NUM_SEQS": "auto"})
    assert gpus.engine_config().max_num_seqs == 128 and gpus.inference_slots == 256 and gpus.connection_cap == 512
    assert load_config(["--model", "m", "--device", "cuda", "--max-num-seqs", "4"], {}).inference_slots == 4
    assert (
        load_config(["--model", "m", "--device", "cpu"], {"TTS_MAX_NUM_SEQS": "64"}).engine_config().max_num_seqs == 64
    )
    with pytest.raises(ConfigError, match="--max-concurrent-connections"):
        load_config(["--model", "m", "--device", "cuda", "--max-concurrent-connections", "100"], {})
    with pytest.raises(ConfigError, match="--max-num-seqs must be >= 1, got 0"):
        load_config(["--model", "m", "--max-num-seqs", "0"], {})


def test_the_vae_units_setting_reaches_the_engine():
    assert load_config(["--model", "m"], {}).engine_config().vae_units == "auto"
    assert load_config(["--model", "m", "--vae-units", "gemm"], {}).engine_config().vae_units == "gemm"
    assert load_config(["--model", "m"], {"TTS_VAE_UNITS": "one-kernel"}).engine_config().vae_units == "one-kernel"
    with pytest.raises(ConfigError, match="--vae-units must be one of auto, passes, gemm, one-kernel, got 'fused'"):
        load_config(["--model", "m", "--vae-units", "fused"], {}).engine_config()


def test_the_vae_overlap_setting_reaches_the_engine():
    assert load_config(["--model", "m"], {}).engine_config().vae_overlap is True
    assert load_config(["--model", "m", "--no-vae-overlap"], {}).engine_config().vae_overlap is False
    assert load_config(["--model", "m"], {"TTS_VAE_OVERLAP": "0"}).engine_config().vae_overlap is False


def test_the_vae_dtype_setting_reaches_the_engine():
    assert load_config(["--model", "m"], {}).engine_config().vae_dtype == "float32"
    assert load_config(["--model", "m", "--vae-dtype", "bfloat16"], {}).engine_config().vae_dtype == "bfloat16"
    assert load_config(["--model", "m"], {"TTS_VAE_DTYPE": "bfloat16"}).engine_config().vae_dtype == "bfloat16"
    with pytest.raises(ConfigError, match="--vae-dtype must be one of float32, bfloat16, got 'fp16'"):
        load_config(["--model", "m", "--vae-dtype", "fp16"], {})
