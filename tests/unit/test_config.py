"""Settings from the environment, with explicit values on top."""

from __future__ import annotations

import pytest

from mmindex.config import DEFAULT_DB, Settings
from mmindex.errors import ConfigError


def test_environment_then_overrides() -> None:
    env = {"MMINDEX_DB": "/data/db", "MMINDEX_TABLE": "photos", "MMINDEX_BATCH_SIZE": "64"}
    settings = Settings.from_env(env, table="override")
    assert (settings.db, settings.table, settings.batch_size) == ("/data/db", "override", 64)
    assert Settings.from_env({}).db == DEFAULT_DB


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MMINDEX_BATCH_SIZE": "many"}, "not an integer"),
        ({"MMINDEX_DEVICE": "tpu"}, "not one of"),
        ({"MMINDEX_TABLE": "bad name!"}, "not valid"),
        ({"MMINDEX_WORKERS": "0"}, "at least 1"),
    ],
)
def test_bad_values_name_the_variable_and_the_fix(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)
