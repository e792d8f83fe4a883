"""The OpenAPI 3.1 description of the HTTP API, served at /api/openapi.json."""

from __future__ import annotations

from collections.abc import Iterable

from . import __version__
from .jobs.spec import RESEARCH_AGENT, QueueSpec

ERROR = {"$ref": "#/components/schemas/Error"}


ERROR_TEXTS = {
    400: "malformed body, field or query",
    401: "missing or invalid credentials",
    403: "a cross-site request (Origin or Sec-Fetch-Site shows another site's page)",
    404: "not found, or not yours",
    409: "the job has already completed, failed or been cancelled",
    413: "body over MAX_BODY_BYTES",
    415: "neither JSON nor a form",
    421: "a Host this server does not answer to (loopback names and ALLOWED_HOSTS)",
    429: "rate limited",
    431: "request headers too large",
    503: "a part is unavailable (failing names it: redis or database)",
}
# What any route may answer, whatever it does.
EVERY_ROUTE = (421, 431)


def _error_responses(*codes: int) -> dict:
    return {
        str(code): {
            "description": ERROR_TEXTS[code],
            "content": {"application/json": {"schema": ERROR}},
        }
        for code in sorted({*codes, *EVERY_ROUTE})
    }


def _ok(schema: dict, code: int = 200, description: str = "success") -> dict:
    return {
        str(code): {"description": description, "content": {"application/json": {"schema": schema}}}
    }


def _path_param(name: str) -> dict:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string", "format": "uuid"},
    }


ACCEPT_BODY = {
    "required": True,
    "content": {
        media: {"schema": {"$ref": "#/components/schemas/AcceptRequest"}}
        for media in (
            "application/json",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        )
    },
}


def _queue_paths(spec: QueueSpec) -> dict:
    """One queue's four routes, as `api.setup_routes` makes them from its spec."""
    ref = lambda name: {"$ref": f"#/components/schemas/{name}"}  # noqa: E731
    research = spec.agent == RESEARCH_AGENT
    job = _path_param("jobId")
    status_param = _path_param("messageId" if "{messageId}" in spec.status_path else "jobId")
    deduplicated = " (deduplicated per conversation)" if spec.dedupe else ""
    return {
        spec.accept_path: {
            "post": {
                "summary": f"Put a question to the {spec.name} queue{deduplicated}",
                "requestBody": ACCEPT_BODY,
                "responses": {
                    **_ok(ref("Accepted"), 202, "queued" + (" or deduplicated" * spec.dedupe)),
                    **_error_responses(400, 401, 403, 404, 413, 415, 429, 503),
                },
            }
        },
        spec.status_path: {
            "get": {
                "summary": f"A {spec.name} job's status",
                "parameters": [status_param],
                "responses": {
                    **_ok(ref("ResearchStatus" if research else "ChatStatus")),
                    **_error_responses(401, 404, 503),
                },
            }
        },
        f"{spec.path}/retry/{{jobId}}": {
            "post": {
                "summary": f"Retry a failed {spec.name} job",
                "parameters": [job],
                "responses": {
                    **_ok(ref("Retrying")),
                    **_error_responses(400, 401, 403, 404, 429, 503),
                },
            }
        },
        f"{spec.path}/cancel/{{jobId}}": {
            "post": {
                "summary": f"Cancel a {spec.name} job (waiting, delayed or active)",
                "parameters": [job],
                "responses": {**_ok(ref("Cancelled")), **_error_responses(401, 404, 409, 503)},
            }
        },
    }


def openapi_document(specs: Iterable[QueueSpec]) -> dict:
    ref = lambda name: {"$ref": f"#/components/schemas/{name}"}  # noqa: E731
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "bioagents",
            "version": __version__,
            "description": "Chat and deep-research jobs for AI research agents.",
        },
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "apiKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-API-Key",
                    "description": "BIOAGENTS_API_KEY; the caller names the user (X-User-Id)",
                },
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["ok", "error"],
                    "properties": {
                        "ok": {"const": False},
                        "error": {"type": "string"},
                        "retryAfter": {"type": "integer"},
                        "status": {"type": "string"},
                        "failing": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "AcceptRequest": {
                    "type": "object",
                    "required": ["message"],
                    "properties": {
                        "message": {"type": "string", "minLength": 1, "maxLength": 20000},
                        "conversationId": {"type": "string", "format": "uuid"},
                        "userId": {"type": "string", "maxLength": 128},
                    },
                },
                "Accepted": {
                    "type": "object",
                    "required": [
                        "jobId",
                        "messageId",
                        "conversationId",
                        "userId",
                        "status",
                        "pollUrl",
                    ],
                    "properties": {
                        "jobId": {"type": "string"},
                        "messageId": {"type": "string"},
                        "conversationId": {"type": "string"},
                        "userId": {"type": "string"},
                        "status": {"const": "queued"},
                        "pollUrl": {"type": "string"},
                        "deduplicated": {"type": "boolean"},
                    },
                },
                "Progress": {
                    "type": ["object", "null"],
                    "properties": {"stage": {"type": "string"}, "percent": {"type": "integer"}},
                },
                "ChatStatus": {
                    "type": "object",
                    "required": ["status", "progress", "attemptsMade"],
                    "properties": {
                        "status": {"enum": ["waiting", "active", "delayed", "completed", "failed"]},
                        "progress": ref("Progress"),
                        "attemptsMade": {"type": "integer"},
                        "result": {
                            "type": "object",
                            "properties": {
                                "text": {"type": "string"},
                                "userId": {"type": "string"},
                                "responseTime": {"type": "integer"},
                            },
                        },
                        "error": {"type": "string"},
                    },
                },
                "ResearchStatus": {
                    "type": "object",
                    "required": ["status", "messageId", "conversationId"],
                    "properties": {
                        "status": {"enum": ["processing", "completed", "failed"]},
                        "messageId": {"type": "string"},
                        "conversationId": {"type": "string"},
                        "progress": {
                            "type": "object",
                            "properties": {
                                "stage": {"type": ["string", "null"]},
                                "percent": {"type": "integer"},
                                "completedSteps": {"type": "array", "items": {"type": "string"}},
                            },
                        },
                        "result": {
                            "type": "object",
                            "properties": {
                                "text": {"type": "string"},
                                "papers": {"type": "array", "items": {"type": "string"}},
                            },
                        },
                        "error": {"type": ["string", "null"]},
                    },
                },
                "Retrying": {
                    "type": "object",
                    "properties": {
                        "ok": {"const": True},
                        "jobId": {"type": "string"},
                        "status": {"const": "retrying"},
                        "previousAttempts": {"type": "integer"},
                    },
                },
                "Cancelled": {
                    "type": "object",
                    "properties": {
                        "ok": {"const": True},
                        "jobId": {"type": "string"},
                        "status": {"const": "cancelled"},
                    },
                },
                "Usage": {
                    "type": "object",
                    "required": ["promptTokens", "completionTokens"],
                    "properties": {
                        "promptTokens": {"type": "integer"},
                        "completionTokens": {"type": "integer"},
                    },
                },
                "Message": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "conversationId": {"type": "string"},
                        "userId": {"type": "string"},
                        "question": {"type": "string"},
                        "content": {"type": ["string", "null"]},
                        "status": {"enum": ["PENDING", "COMPLETE", "FAILED", "CANCELLED"]},
                        "error": {"type": ["string", "null"]},
                        "responseTime": {"type": ["integer", "null"]},
                        "createdAt": {"type": "string", "format": "date-time"},
                        "updatedAt": {"type": "string", "format": "date-time"},
                        "state": {"type": ["object", "null"]},
                        "usage": ref("Usage"),
                    },
                },
                "Health": {
                    "type": "object",
                    "properties": {
                        "status": {"enum": ["ok", "degraded"]},
                        "timestamp": {"type": "string"},
                        "database": {"enum": ["connected", "unreachable"]},
                        "jobQueue": {
                            "type": "object",
                            "properties": {
                                "enabled": {"type": "boolean"},
                                "redis": {"enum": ["connected", "unreachable", "disabled"]},
                                "workers": {"type": "integer"},
                                "workersByQueue": {"type": "object"},
                            },
                        },
                        "failing": {
                            "type": "array",
                            "items": {"enum": ["database", "redis", "workers"]},
                        },
                        "error": {"type": "string"},
                    },
                },
            },
        },
        "security": [{"bearer": []}, {"apiKey": []}, {}],
        "paths": {
            **{path: item for spec in specs for path, item in _queue_paths(spec).items()},
            "/api/messages/{messageId}": {
                "get": {
                    "summary": "One message",
                    "parameters": [_path_param("messageId")],
                    "responses": {**_ok(ref("Message")), **_error_responses(401, 404)},
                }
            },
            "/api/conversations/{conversationId}/messages": {
                "get": {
                    "summary": "A conversation's messages, oldest first",
                    "parameters": [
                        _path_param("conversationId"),
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 200},
                        },
                        {
                            "name": "before",
                            "in": "query",
                            "schema": {"type": "string"},
                            "description": "a message id or an ISO 8601 time",
                        },
                    ],
                    "responses": {
                        **_ok(
                            {
                                "type": "object",
                                "properties": {
                                    "messages": {"type": "array", "items": ref("Message")}
                                },
                            }
                        ),
                        **_error_responses(400, 401, 404),
                    },
                }
            },
            "/api/health": {
                "get": {
                    "summary": "Health of the database, Redis and workers",
                    "security": [{}],
                    "responses": {
                        **_ok(ref("Health")),
                        **_error_responses(),
                        "503": {
                            "description": "degraded: failing names the parts, never addresses",
                            "content": {"application/json": {"schema": ref("Health")}},
                        },
                    },
                }
            },
            "/api/openapi.json": {
                "get": {
                    "summary": "This document",
                    "security": [{}],
                    "responses": {"200": {"description": "OpenAPI 3.1"}, **_error_responses()},
                }
            },
        },
    }
