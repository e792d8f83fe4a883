"""Reading a `/metrics` scrape with prometheus_client's own text parser."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset], float]


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    """Every sample by (sample name, labels), and each family's type by family name."""
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples, types


def value(samples: Samples, name: str, **labels) -> float:
    """One sample's value; 0 when the scrape does not have it."""
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(client, headers: dict | None = None) -> Samples:
    response = await client.get("/metrics", headers=headers or {})
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse(await response.text())[0]
