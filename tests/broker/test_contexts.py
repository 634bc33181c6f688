"""Hosted user @contexts at /jsonldContexts (GS CIM 009 5.13)."""

from __future__ import annotations

from urllib.parse import quote

import httpx

API = "/ngsi-ld/v1"


async def test_hosted_context_is_listed_served_used_and_deleted(http: httpx.AsyncClient, tenant: str) -> None:
    document = {"@context": {"speed": "https://example.org/vocab/speed", "Car": "https://example.org/vocab/Car"}}
    added = await http.post(f"{API}/jsonldContexts", json=document)
    assert added.status_code == 201, added.text
    url = added.headers["Location"]
    local_id = url.rsplit("/", 1)[-1]
    assert url in (await http.get(f"{API}/jsonldContexts")).json()
    served = await http.get(f"{API}/jsonldContexts/{local_id}")
    assert served.json() == document
    # GS CIM 009 5.13.4: the contextId may be the context's URL, percent-encoded in the path.
    by_url = await http.get(f"{API}/jsonldContexts/{quote(url, safe='')}")
    assert by_url.status_code == 200 and by_url.json() == document, by_url.text

    link = f'<{url}>; rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'
    headers = {"Link": link, "NGSILD-Tenant": tenant}
    car = {"id": "urn:ngsi-ld:Car:1", "type": "Car", "speed": {"type": "Property", "value": 80}}
    assert (await http.post(f"{API}/entities", json=car, headers=headers)).status_code == 201
    # A JSON-LD answer carries the user context and the core one after it (as Orion-LD): the user context
    # alone does not define id, type or Property for a JSON-LD processor.
    as_json_ld = await http.get(f"{API}/entities/urn:ngsi-ld:Car:1",
                                headers={**headers, "Accept": "application/ld+json"})
    assert as_json_ld.json()["@context"] == [url, "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"]
    assert as_json_ld.json()["speed"]["value"] == 80
    plain = (await http.get(f"{API}/entities/urn:ngsi-ld:Car:1", headers={"NGSILD-Tenant": tenant})).json()
    assert plain["type"] == "https://example.org/vocab/Car"
    assert "https://example.org/vocab/speed" in plain

    assert (await http.delete(f"{API}/jsonldContexts/{local_id}")).status_code == 204
    assert (await http.get(f"{API}/jsonldContexts/{local_id}")).status_code == 404


async def test_context_that_is_not_an_object_is_400(http: httpx.AsyncClient) -> None:
    got = await http.post(f"{API}/jsonldContexts", json=["not", "a", "context"])
    assert got.status_code == 400
