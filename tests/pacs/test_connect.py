"""From params.yaml's ``pacs`` section to a transport: transports, filters and where credentials may come from."""

from __future__ import annotations

from datetime import date

import pytest

from tasks.config import ConfigError, validate_params
from tasks.pacs.connect import auth_from_secret, open_transport, series_filter
from tasks.pacs.dicomweb import DicomwebTransport
from tasks.pacs.dimse import DimseTransport


def pacs(**values: object):
    return validate_params({"pacs": values}).pacs


def test_one_transport_from_the_section():
    web = open_transport(pacs(url="http://127.0.0.1:8042/dicom-web", retries=2, timeout_s=5), environ={})
    assert isinstance(web, DicomwebTransport)
    dimse = open_transport(pacs(dimse="127.0.0.1:4242:ORTHANC", calling_aet="NODE1"))
    assert isinstance(dimse, DimseTransport) and "NODE1" in repr(dimse)
    with pytest.raises(ValueError, match="needs a PACS: pacs.url"):
        open_transport(pacs())
    with pytest.raises((ConfigError, ValueError), match="not both"):
        pacs(url="http://127.0.0.1:8042/dicom-web", dimse="127.0.0.1:4242:ORTHANC")


def test_credentials_never_come_from_params_yaml():
    with pytest.raises((ConfigError, ValueError), match="password"):
        validate_params({"pacs": {"url": "http://127.0.0.1:8042/dicom-web", "password": "s3cret"}})
    with pytest.raises((ConfigError, ValueError), match="must not hold credentials"):
        pacs(url="http://alice:s3cret@127.0.0.1:8042/dicom-web")


def test_credentials_from_the_environment_or_a_secret_block_stay_hidden():
    config = pacs(url="https://pacs.example/dicom-web", credentials_env="SITE_PACS")
    transport = open_transport(config, environ={"SITE_PACS_USER": "svc", "SITE_PACS_PASSWORD": "s3cret"})
    assert "s3cret" not in repr(transport)
    secret = open_transport(config, secret={"token": "t0ken"}, environ={})
    assert "t0ken" not in repr(secret)
    assert "t0ken" not in repr(auth_from_secret("t0ken"))
    assert auth_from_secret({"user": "svc", "password": "s3cret"}).user == "svc"
    with pytest.raises(ValueError, match="credentials_block must hold"):
        auth_from_secret({"user": "svc"})


def test_filters_are_checked_when_params_yaml_is_read():
    assert series_filter(pacs(study_date="20260101-20260131")).study_date == ("20260101", "20260131")
    assert series_filter(pacs(study_date="20260105")).study_date == ("20260105", "20260105")  # one day
    chosen = series_filter(pacs(modality="CT", series_description="(?i)abdomen"))
    assert chosen.modality == "CT" and chosen.series_description == "(?i)abdomen"
    with pytest.raises((ConfigError, ValueError), match="study_date must be YYYYMMDD-YYYYMMDD"):
        pacs(study_date="2026-01-01")
    with pytest.raises(ValueError, match="pacs filters: study_date range is reversed"):
        series_filter(pacs(study_date="20260131-20260101"))
    with pytest.raises((ConfigError, ValueError), match="series_description is not a regular expression"):
        pacs(series_description="(unclosed")


def test_recent_days_counts_back_from_today_and_excludes_a_fixed_range():
    assert series_filter(pacs(recent_days=1), today=date(2026, 3, 1)).study_date == ("20260301", "20260301")
    assert series_filter(pacs(recent_days=2), today=date(2026, 3, 1)).study_date == ("20260228", "20260301")
    assert series_filter(pacs(recent_days=366), today=date(2024, 12, 31)).study_date == ("20240101", "20241231")
    today = date.today().strftime("%Y%m%d")
    assert series_filter(pacs(recent_days=3)).study_date[1] == today
    assert series_filter(pacs()).study_date is None  # no window: every series
    with pytest.raises((ConfigError, ValueError), match="study_date .* or recent_days .*not both"):
        pacs(study_date="20260101", recent_days=2)
    with pytest.raises((ConfigError, ValueError), match="recent_days"):
        pacs(recent_days=0)
