"""From the ``pacs`` section of ``params.yaml`` to a transport and a filter: the one place settings meet secrets.

Credentials come from the environment (``<credentials_env>_TOKEN``, or ``_USER`` + ``_PASSWORD``) or from a
secret the caller loaded (the Prefect flow reads the Secret block ``pacs.credentials_block``); they are
handed to the transport as an :class:`~tasks.pacs.dicomweb.Auth`, whose ``repr`` hides them, and nothing
here logs or returns them.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from typing import Any

from tasks.config import PacsConfig
from tasks.pacs.dicomweb import Auth, DicomwebTransport, auth_from_env
from tasks.pacs.dimse import DimseTransport
from tasks.pacs.transport import RetryPolicy, SeriesFilter, Transport


def retry_policy(config: PacsConfig) -> RetryPolicy:
    return RetryPolicy(attempts=config.retries, backoff_s=config.backoff_s, timeout_s=config.timeout_s)


def auth_from_secret(value: Any) -> Auth:
    """A Secret block's value: a token (a string), or ``{"token": …}`` / ``{"user": …, "password": …}``."""
    if isinstance(value, str) and value:
        return Auth(token=value)
    if isinstance(value, dict):
        if value.get("token"):
            return Auth(token=str(value["token"]))
        if value.get("user") and value.get("password"):
            return Auth(user=str(value["user"]), password=str(value["password"]))
    raise ValueError("pacs.credentials_block must hold a token, or {\"user\": ..., \"password\": ...}")


def open_transport(config: PacsConfig, secret: Any = None, environ: dict[str, str] | None = None) -> Transport:
    """The transport ``config`` names: DICOMweb (``url``) or DIMSE (``dimse``). ``secret``: the value of the
    Secret block, when one is configured (it wins over the environment)."""
    retry = retry_policy(config)
    if config.url:
        auth = auth_from_secret(secret) if secret is not None else auth_from_env(config.credentials_env, environ)
        return DicomwebTransport(config.url, auth=auth, verify_tls=config.verify_tls, retry=retry)
    if config.dimse:
        return DimseTransport.from_spec(config.dimse, calling_aet=config.calling_aet, retry=retry)
    raise ValueError("pacs-sync needs a PACS: pacs.url (DICOMweb root) or pacs.dimse (HOST:PORT:AET), "
                     "or --url / --dimse")


def series_filter(config: PacsConfig, today: date | None = None) -> SeriesFilter:
    """``study_date`` as ``YYYYMMDD-YYYYMMDD`` (one day: ``YYYYMMDD``) or ``recent_days`` counted back from
    ``today`` (default: the host's local date, as StudyDate is the acquiring site's), modality, description regex.

    Without a date filter every series of the PACS is looked at on every run: fine for a one-off sync, not for
    a schedule on a hospital PACS, which is why the ``pacs-sync`` deployment sets ``recent_days``."""
    dates = None
    if config.study_date:
        first, _, last = config.study_date.partition("-")
        dates = (first, last or first)
    elif config.recent_days:
        last_day = today or date.today()
        first_day = last_day - timedelta(days=config.recent_days - 1)
        dates = (first_day.strftime("%Y%m%d"), last_day.strftime("%Y%m%d"))
    try:
        return SeriesFilter(study_date=dates, modality=config.modality, series_description=config.series_description)
    except (ValueError, re.error) as error:
        raise ValueError(f"pacs filters: {error}") from None
