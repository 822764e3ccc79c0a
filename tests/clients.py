"""Vendor access tokens, fetched the way each vendor's clients fetch them."""

from __future__ import annotations

from typing import Any

import httpx


def marketo_token(http: httpx.Client, info: dict[str, Any]) -> str:
    """A Marketo access token (``GET /identity/oauth/token``, client credentials)."""
    r = http.get(
        "/identity/oauth/token",
        params={"grant_type": "client_credentials", "client_id": info["client_id"],
                "client_secret": info["client_secret"]},
    )  # fmt: skip
    return str(r.json()["access_token"])


def wechat_token(http: httpx.Client, info: dict[str, Any]) -> str:
    """A WeChat access token (``GET /cgi-bin/token``, appid and secret)."""
    r = http.get(
        "/cgi-bin/token",
        params={"grant_type": "client_credential", "appid": info["client_id"],
                "secret": info["client_secret"]},
    )  # fmt: skip
    return str(r.json()["access_token"])
