"""The page requires the same login as the rest of the Airflow UI, checked against a real api-server."""

from __future__ import annotations

import pytest
import requests

PAGE = "/currents-to-segment/"
ROUTES = (PAGE, "/currents-to-segment/api/windows", "/currents-to-segment/?limit=3")


@pytest.mark.parametrize("route", ROUTES)
def test_page_without_login_is_refused(site, route):
    response = requests.get(f"{site.base_url}{route}", timeout=30, allow_redirects=False)

    assert response.status_code == 401
    assert "Currents to Segment" not in response.text


@pytest.mark.parametrize(
    ("header", "cookie"),
    (
        ({"Authorization": "Bearer not-a-token"}, {}),
        ({}, {"_token": "not-a-token"}),
    ),
)
def test_page_with_a_forged_token_is_refused(site, header, cookie):
    response = requests.get(f"{site.base_url}{PAGE}", headers=header, cookies=cookie, timeout=30)

    assert response.status_code in (401, 403)
    assert "Currents to Segment" not in response.text


def test_a_token_signed_with_another_secret_is_refused(site):
    import jwt

    claims = jwt.decode(site.token(), options={"verify_signature": False})
    forged = jwt.encode(claims, "another-secret-" * 8, algorithm="HS512")

    response = requests.get(
        f"{site.base_url}{PAGE}", headers={"Authorization": f"Bearer {forged}"}, timeout=30
    )

    assert response.status_code in (401, 403)


def test_page_with_a_bearer_token_is_served(site):
    response = requests.get(
        f"{site.base_url}{PAGE}", headers={"Authorization": f"Bearer {site.token()}"}, timeout=30
    )

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<h1>Currents to Segment</h1>" in response.text
    assert "script" not in response.headers["content-security-policy"]


def test_page_with_the_ui_cookie_is_served(site):
    response = requests.get(f"{site.base_url}{PAGE}", cookies={"_token": site.token()}, timeout=30)

    assert response.status_code == 200
    assert 'data-dag-id="currents_to_segment_alpha"' in response.text


def test_the_app_publishes_no_unauthenticated_docs(site):
    for route in ("/currents-to-segment/docs", "/currents-to-segment/openapi.json"):
        response = requests.get(f"{site.base_url}{route}", timeout=30)
        assert response.status_code in (401, 403, 404), route


def test_plugin_registers_the_app_and_a_nav_entry(site):
    response = requests.get(
        f"{site.base_url}/api/v2/plugins", headers={"Authorization": f"Bearer {site.token()}"}, timeout=30
    )

    assert response.status_code == 200
    (plugin,) = [p for p in response.json()["plugins"] if p["name"] == "braze_currents_to_segment"]
    assert plugin["fastapi_apps"][0]["url_prefix"] == "/currents-to-segment"
    (view,) = plugin["external_views"]
    assert (view["name"], view["url_route"], view["destination"]) == (
        "Currents to Segment",
        "currents-to-segment",
        "nav",
    )
