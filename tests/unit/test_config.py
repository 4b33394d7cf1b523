"""Settings: presets, overrides, and one clear error naming the bad setting."""

from __future__ import annotations

import pytest

from shared.config import load_settings
from shared.errors import ConfigError

BASE = {"ALTINN_APPS": "ttd/apps-test", "MASKINPORTEN_CLIENT_ID": "client", "MASKINPORTEN_PRIVATE_KEY": "secret-key-material"}


def test_tt02_is_the_default_preset():
    s = load_settings(BASE)
    assert s.platform_url == "https://platform.tt02.altinn.no"
    assert s.apps_base("ttd") == "https://ttd.apps.tt02.altinn.no"
    assert s.maskinporten_issuer == "https://test.maskinporten.no/"
    assert s.token_endpoint == "https://test.maskinporten.no/token"
    assert s.event_types == {"app.instance.process.completed"}
    assert s.archive_container == "altinn-data"
    assert s.scopes == "altinn:serviceowner/instances.read altinn:serviceowner/instances.write"
    assert s.storage.connection_string == "UseDevelopmentStorage=true"


def test_production_preset():
    s = load_settings(BASE | {"ALTINN_ENVIRONMENT": "production"})
    assert s.platform_url == "https://platform.altinn.no"
    assert s.apps_base("brg") == "https://brg.apps.altinn.no"
    assert s.maskinporten_issuer == "https://maskinporten.no/"


def test_overrides_and_lists():
    s = load_settings(
        BASE
        | {
            "ALTINN_APPS": " ttd/a , brg/b-c ",
            "ALTINN_EVENT_TYPES": "app.instance.process.completed,app.instance.created",
            "ALTINN_PLATFORM_URL": "http://127.0.0.1:9000/",
            "ALTINN_APPS_URL": "http://127.0.0.1:9000",
            "MASKINPORTEN_URL": "http://127.0.0.1:9000/maskinporten",
        }
    )
    assert s.apps == {("ttd", "a"), ("brg", "b-c")}
    assert s.event_types == {"app.instance.process.completed", "app.instance.created"}
    assert s.platform_url == "http://127.0.0.1:9000"
    assert s.maskinporten_issuer == "http://127.0.0.1:9000/maskinporten/"
    assert s.allowed_origins() == {"http://127.0.0.1:9000"}


def test_only_the_platform_may_receive_the_token():
    s = load_settings(BASE | {"ALTINN_APPS": "ttd/a,brg/b", "ALTINN_ENVIRONMENT": "production"})
    assert s.allowed_origins() == {"https://platform.altinn.no"}  # no app host, ever
    assert s.storage_instance_url("5001", "g") == "https://platform.altinn.no/storage/api/v1/instances/5001/g"


def test_retry_and_download_settings():
    s = load_settings(BASE)
    assert s.retry_schedule == (60, 120, 300, 900, 1800, 3600) and s.retry_max_hours == 24
    assert [s.retry_delay(n) for n in (1, 2, 6, 7, 50)] == [60, 120, 3600, 3600, 3600]
    assert s.min_download_rate == 1024 * 1024 and s.catchup_refused_quiet_hours == 24
    assert s.state_container == "altinn-mottak-state"
    s = load_settings(
        BASE
        | {
            "ARCHIVE_RETRY_SCHEDULE": " 0.5, 2 ,10",
            "ARCHIVE_RETRY_MAX_HOURS": "0.01",
            "ARCHIVE_MIN_DOWNLOAD_RATE_KIB": "64",
            "CATCHUP_REFUSED_QUIET_HOURS": "0",
            "ARCHIVE_STATE_CONTAINER": "my-state",
        }
    )
    assert s.retry_schedule == (0.5, 2, 10) and s.retry_max_hours == 0.01 and s.min_download_rate == 64 * 1024
    assert s.catchup_refused_quiet_hours == 0 and s.state_container == "my-state"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ARCHIVE_RETRY_SCHEDULE", "60,soon"),
        ("ARCHIVE_RETRY_SCHEDULE", "-1"),
        ("ARCHIVE_RETRY_SCHEDULE", "700000"),
        ("ARCHIVE_RETRY_SCHEDULE", ","),
        ("ARCHIVE_RETRY_MAX_HOURS", "0"),
        ("ARCHIVE_RETRY_MAX_HOURS", "nan"),
        ("ARCHIVE_RETRY_MAX_HOURS", "1000"),
        ("ARCHIVE_MIN_DOWNLOAD_RATE_KIB", "0"),
        ("CATCHUP_REFUSED_QUIET_HOURS", "-2"),
        ("ARCHIVE_STATE_CONTAINER", "altinn-data"),
        ("ARCHIVE_STATE_CONTAINER", "Bad_Name"),
    ],
)
def test_bad_retry_settings_name_the_setting_not_the_value(name, value):
    with pytest.raises(ConfigError) as err:
        load_settings(BASE | {name: value})
    assert err.value.setting == name


def test_identity_based_storage():
    s = load_settings(BASE | {"AzureWebJobsStorage__accountName": "stmottak01", "AzureWebJobsStorage__clientId": "abc"})
    assert s.storage.uses_identity
    assert s.storage.blob_url == "https://stmottak01.blob.core.windows.net"
    assert s.storage.queue_url == "https://stmottak01.queue.core.windows.net"
    assert s.storage.client_id == "abc"


BAD = {
    "ALTINN_ENVIRONMENT": "staging",
    "ALTINN_APPS": "ttd",
    "ALTINN_EVENT_TYPES": "bad type!",
    "ALTINN_PLATFORM_URL": "http://platform.altinn.no",
    "ALTINN_APPS_URL": "https://user:pw@{org}.apps.altinn.no",
    "MASKINPORTEN_URL": "ftp://maskinporten.no/",
    "ARCHIVE_CONTAINER": "Not_Valid",
    "ARCHIVE_PARALLEL_DOWNLOADS": "lots",
}


@pytest.mark.parametrize("name,value", BAD.items(), ids=BAD.keys())
def test_bad_setting_names_the_setting_and_not_the_value(name, value):
    with pytest.raises(ConfigError) as err:
        load_settings(BASE | {name: value})
    assert err.value.setting == name
    assert name in str(err.value)


@pytest.mark.parametrize("name", ["ALTINN_APPS", "MASKINPORTEN_CLIENT_ID", "MASKINPORTEN_PRIVATE_KEY"])
def test_missing_required_setting(name):
    env = {k: v for k, v in BASE.items() if k != name}
    with pytest.raises(ConfigError) as err:
        load_settings(env)
    assert err.value.setting == name


def test_secret_never_in_repr():
    s = load_settings(BASE)
    assert "secret-key-material" not in repr(s)


def test_apps_url_org_placeholder_only_in_host():
    with pytest.raises(ConfigError):
        load_settings(BASE | {"ALTINN_APPS_URL": "https://apps.example.no/{org}"})
