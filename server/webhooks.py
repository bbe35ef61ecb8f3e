"""Builds webhooks from the configuration: checks every endpoint and makes the deliverer that
sends the outbox (which the session actors write to) to them.

There is a deliverer only where endpoints are configured; ``make_app`` runs it inside the
store's life (it starts after the store opens and stops before it closes).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping

from yarl import URL

from actors.core.ids import new_id
from actors.core.webhooks import WEBHOOK_EVENTS, WebhookEndpoint
from actors.store.base import OutboxStore
from actors.webhooks.deliverer import Deliverer
from server.config import Config, ConfigError, WebhookEndpointSection
from server.metrics import Metrics

__all__ = ["decode_secret", "endpoints_of", "make_deliverer"]

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_SECRET_PREFIX = "whsec_"
_MIN_SECRET_BYTES = 16


def decode_secret(where: str, secret: str) -> bytes:
    """The key of a ``whsec_<base64>`` secret; ConfigError saying what is wrong with it."""
    if not secret.startswith(_SECRET_PREFIX):
        raise ConfigError(f"{where}: a webhook secret starts with {_SECRET_PREFIX!r} (then base64 of random bytes)")
    raw = secret.removeprefix(_SECRET_PREFIX)
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{where}: the webhook secret after {_SECRET_PREFIX!r} is not base64") from None
    if len(key) < _MIN_SECRET_BYTES:
        raise ConfigError(f"{where}: the webhook secret holds {len(key)} bytes; use at least {_MIN_SECRET_BYTES} "
                          "random bytes (24 to 64 is the Standard Webhooks advice)")
    return key


def _endpoint(name: str, section: WebhookEndpointSection, env: Mapping[str, str]) -> WebhookEndpoint:
    where = f"webhooks.endpoints.{name}"
    if not _NAME.match(name):
        raise ConfigError(f"{where}: an endpoint name is 1 to 64 letters, digits, '_', '.' or '-'")
    try:
        url = URL(section.url)
    except ValueError as exc:
        raise ConfigError(f"{where}.url {section.url!r} is not a URL ({exc})") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ConfigError(f"{where}.url must be an http:// or https:// URL with a host, not {section.url!r}")
    if url.user is not None or url.password is not None:
        raise ConfigError(f"{where}.url must not carry credentials (they would show in every listing)")
    if url.fragment:
        raise ConfigError(f"{where}.url must not have a #fragment")
    if bool(section.secret) == bool(section.secret_env):
        raise ConfigError(f"{where}: give exactly one of secret and secret_env")
    secret = section.secret
    if section.secret_env:
        secret = env.get(section.secret_env, "")
        if not secret:
            raise ConfigError(f"{where}.secret_env names {section.secret_env}, which is not set")
    unknown = sorted(set(section.events) - set(WEBHOOK_EVENTS))
    if unknown or not section.events:
        raise ConfigError(f"{where}.events: {unknown or 'none'}; choose from {', '.join(WEBHOOK_EVENTS)}")
    return WebhookEndpoint(
        name=name,
        url=str(url),
        secret=decode_secret(where, secret),
        events=frozenset(section.events),
        namespaces=frozenset(section.namespaces),
        agents=frozenset(section.agents),
    )


def endpoints_of(config: Config, env: Mapping[str, str] | None = None) -> list[WebhookEndpoint]:
    """Every ``[webhooks.endpoints.NAME]``, checked (ConfigError names the first bad one)."""
    source = os.environ if env is None else env
    return [_endpoint(name, section, source) for name, section in sorted(config.webhooks.endpoints.items())]


def make_deliverer(
    config: Config, store: OutboxStore, *, node_id: str | None, metrics: Metrics | None
) -> Deliverer | None:
    """The deliverer of the configured endpoints (None without any); ``make_app`` gives the
    registry its ``outbox()`` and runs it inside the store's life."""
    endpoints = endpoints_of(config)
    if not endpoints:
        return None
    return Deliverer(
        store,
        endpoints,
        config.webhooks,  # a DeliverySettings, with the endpoints beside
        owner=node_id or config.cluster.node_id or new_id("node"),
        release_all=config.store.kind == "sqlite",
        on_attempt=metrics.observe_webhook if metrics is not None else None,
    )
