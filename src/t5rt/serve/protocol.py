"""The HTTP API's documents (JSON in, JSON or server-sent events out), independent of Ray.

    POST /v1/generate          {"text": str | [str]} or {"input_ids": [[int]]}, plus generate()'s
                               options by name -> {"sequences": [[int]], "texts": [str] | null,
                               "scores": [float] | null}  (+ "token_scores" with output_scores)
    POST /v1/generate/stream   the same body, ONE input -> text/event-stream, one `data: {...}`
                               event per chunk of new tokens {"tokens", "text", "finished"}
    errors                     4xx/5xx {"error": {"type": "<T5rtError subclass>", "message": ...}}

A request is checked here as far as it can be without the model (JSON, names, types, ranges);
what needs the export (input length, vocab, max_output_len) the replica's runtime checks before
it touches any device state, and its error comes back in the same shape.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInputError, InvalidLogitsError, InvalidOptionError, RequestTooLargeError, T5rtError
from ..generation_config import GenerationConfig
from .errors import AuthenticationError, MethodNotAllowedError, NotFoundError, ServiceUnavailableError

# generate()'s options a request may carry (logits_processors are Python callables: not on the wire)
OPTION_NAMES = tuple(f.name for f in dataclasses.fields(GenerationConfig) if f.name != "logits_processors")
INPUT_NAMES = ("text", "input_ids")
REQUEST_NAMES = frozenset(INPUT_NAMES + OPTION_NAMES + ("timeout",))
MAX_BODY_BYTES = 1 << 20
RETRY_AFTER_S = 1


@dataclass
class GenerateRequest:
    """One checked request: exactly one of texts / input_ids, and generate()'s options."""

    texts: list[str] | None = None
    input_ids: list[list[int]] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None

    @property
    def inputs(self) -> int:
        return len(self.texts if self.texts is not None else self.input_ids or [])

    def call_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of Runtime.generate / submit / stream for this request."""
        kw: dict[str, Any] = dict(self.options)
        if self.input_ids is not None:
            kw["input_ids"] = self.input_ids
        if self.timeout is not None:
            kw["timeout"] = self.timeout
        return kw

    def call_args(self) -> tuple:
        return (self.texts,) if self.texts is not None else ()


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_json_body(body: bytes, max_bytes: int = MAX_BODY_BYTES) -> Any:
    if len(body) > max_bytes:
        raise RequestTooLargeError(f"request body is {len(body)} bytes; this server takes at most {max_bytes}")
    if not body.strip():
        raise InvalidInputError('empty request body: send JSON such as {"text": "...", "max_new_tokens": 32}')
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidInputError(f"request body is not UTF-8 (byte {e.start}); send UTF-8 JSON") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidInputError(f"request body is not JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                                'send e.g. {"text": "...", "max_new_tokens": 32}') from None


def parse_generate_request(body: bytes, *, stream: bool = False, max_bytes: int = MAX_BODY_BYTES) -> GenerateRequest:
    """The JSON body of /v1/generate(/stream) -> GenerateRequest; every problem raises a T5rtError."""
    doc = parse_json_body(body, max_bytes)
    if not isinstance(doc, dict):
        raise InvalidInputError(f"request body must be a JSON object, got {type(doc).__name__}; "
                                'send e.g. {"text": "...", "max_new_tokens": 32}')
    unknown = sorted(set(doc) - REQUEST_NAMES)
    if unknown:
        raise InvalidOptionError(f"unknown field(s): {', '.join(unknown)}; known: "
                                 f"{', '.join(INPUT_NAMES)}, timeout, {', '.join(OPTION_NAMES)}")
    req = GenerateRequest()
    given = [k for k in INPUT_NAMES if doc.get(k) is not None]
    if len(given) != 1:
        raise InvalidInputError('no input: give "text" (a string or a list of strings) or "input_ids" '
                                "(a list of lists of token ids)" if not given
                                else 'give either "text" or "input_ids", not both')
    if "text" in given:
        req.texts = _texts(doc["text"])
    else:
        req.input_ids = _input_ids(doc["input_ids"])
    if stream and req.inputs != 1:
        raise InvalidInputError(f"/v1/generate/stream takes one input, got {req.inputs}; "
                                "send one request per input (or use /v1/generate for a batch)")
    timeout = doc.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0):
        raise InvalidOptionError(f"timeout={timeout!r} is invalid: must be a number of seconds > 0")
    req.timeout = timeout
    req.options = {k: doc[k] for k in OPTION_NAMES if k in doc and doc[k] is not None}
    GenerationConfig.from_options(**req.options)  # names, types and ranges (the export's limits: replica)
    if req.options.get("do_sample") and req.options.get("seed") is None:
        # A request may be retried on another replica (or resumed mid-stream): a seed drawn here
        # makes every attempt sample the same tokens.
        req.options["seed"] = secrets.randbelow(2**31)
    return req


def _texts(v: Any) -> list[str]:
    texts = [v] if isinstance(v, str) else v
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise InvalidInputError('"text" must be a string or a list of strings')
    if not texts:
        raise InvalidInputError('no input: "text" is an empty list')
    for i, t in enumerate(texts):
        if not t.strip():
            raise InvalidInputError(f"input {i} is empty; give text to generate from")
    return texts


def _input_ids(v: Any) -> list[list[int]]:
    if isinstance(v, list) and v and all(_is_int(t) for t in v):
        v = [v]  # one flat list of ids is one input, as in generate()
    if not isinstance(v, list) or not v:
        raise InvalidInputError('"input_ids" must be a non-empty list of lists of token ids')
    for i, row in enumerate(v):
        if not isinstance(row, list) or not all(_is_int(t) for t in row):
            raise InvalidInputError(f'"input_ids"[{i}] must be a list of integer token ids')
        if not row:
            raise InvalidInputError(f"input {i} is empty (no token ids)")
    return v


# -- responses -------------------------------------------------------------------------------------

def output_doc(out: Any) -> dict[str, Any]:
    """A GenerateOutput -> the response document (plain Python numbers)."""
    doc: dict[str, Any] = {
        "sequences": [[int(t) for t in s] for s in out.sequences],
        "texts": list(out.texts) if out.texts is not None else None,
        "scores": [float(s) for s in out.scores] if out.scores is not None else None,
    }
    if getattr(out, "token_scores", None) is not None:
        doc["token_scores"] = [[float(x) for x in r] for r in out.token_scores]
    return doc


def chunk_doc(chunk: Any) -> dict[str, Any]:
    """A stream chunk (.tokens, .text, .finished) -> its event document."""
    return {"tokens": [int(t) for t in chunk.tokens], "text": getattr(chunk, "text", None),
            "finished": bool(chunk.finished)}


def sse_event(doc: dict[str, Any], event: str | None = None) -> bytes:
    """One server-sent event: `event: NAME` (optional) and one `data:` line of JSON."""
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(doc, ensure_ascii=False)}\n\n".encode()


class SSEReader:
    """The client side of sse_event: fed the response line by line, returns (event name or None,
    document) for each data line, else None."""

    def __init__(self) -> None:
        self.event: str | None = None

    def feed(self, raw: bytes) -> tuple[str | None, dict[str, Any]] | None:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("event:"):
            self.event = line[6:].strip()
        elif line.startswith("data:"):
            event, self.event = self.event, None
            return event, json.loads(line[5:])
        elif not line:
            self.event = None
        return None


# -- errors ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ErrorReply:
    """What an error becomes on the wire; built where the exception is (replica or ingress)."""

    status: int
    type: str
    message: str
    retry_after: int | None = None

    def doc(self) -> dict[str, Any]:
        return {"error": {"type": self.type, "message": self.message}}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}


def _named_status(exc: BaseException) -> tuple[int, int | None] | None:
    """Status (and Retry-After) of the service core's errors, matched by name along the MRO so
    this module also works with a runtime that predates them."""
    for cls in type(exc).__mro__:
        if cls.__name__ == "OverloadedError":
            return 429, RETRY_AFTER_S
        if cls.__name__ == "RequestTimeoutError":
            return 504, None
        if cls.__name__ == "RuntimeClosedError":
            return 503, RETRY_AFTER_S
    return None


def error_reply(exc: BaseException) -> ErrorReply:
    """An exception -> status, JSON type and message. Bad requests are 4xx; only the server's own
    failures are 5xx."""
    if isinstance(exc, T5rtError):
        named = _named_status(exc)
        if isinstance(exc, RequestTooLargeError):  # a body over the limit, or too big for memory
            status, retry = 413, None
        elif isinstance(exc, (InvalidInputError, InvalidOptionError)):
            status, retry = 400, None
        elif isinstance(exc, InvalidLogitsError):  # this request's decoding met NaN/inf scores
            status, retry = 422, None
        elif isinstance(exc, AuthenticationError):
            status, retry = 401, None
        elif isinstance(exc, NotFoundError):
            status, retry = 404, None
        elif isinstance(exc, MethodNotAllowedError):
            status, retry = 405, None
        elif isinstance(exc, ServiceUnavailableError):
            status, retry = 503, RETRY_AFTER_S
        elif named is not None:
            status, retry = named
        else:
            status, retry = 500, None
        return ErrorReply(status, type(exc).__name__, str(exc), retry)
    return ErrorReply(500, "InternalError", f"unexpected {type(exc).__name__}: {str(exc)[:2000]}")
