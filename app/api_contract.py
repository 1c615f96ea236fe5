"""What the API's HTTP layer promises beyond its routes, and FastAPI alone does not keep.

* every error a client can cause is a documented 4xx, never a 500: the 422
  echoes the input, and must do so for input JSON cannot carry;
* a 405's `Allow` names every method of the path, and no path redirects to another;
* the OpenAPI document gives integer bounds exactly.
"""

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match, Route

INTEGER_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


class ErrorMessage(BaseModel):
    detail: str


NOT_FOUND = {404: {"model": ErrorMessage, "description": "No such item, or no such path"}}
UNPARSABLE_BODY = {400: {"model": ErrorMessage, "description": "The body is not parsable JSON"}}


def keep_http_contract(app: FastAPI, routes: Sequence[BaseRoute]) -> None:
    """Install the handlers and the schema fix on `app`, which serves `routes`.

    Paths are exact: "/jobs/" (an empty job id) is a 404, not a redirect to
    the list at "/jobs".
    """
    app.router.redirect_slashes = False
    app.add_exception_handler(StarletteHTTPException, partial(http_error, routes=routes))
    app.add_exception_handler(RequestValidationError, validation_error)
    app.openapi = partial(openapi_with_integer_bounds, app)


def openapi_with_integer_bounds(app: FastAPI) -> dict[str, Any]:
    """FastAPI's OpenAPI document, with the bounds of integers written as integers.

    FastAPI's OpenAPI model keeps bounds as floats, which changes large ones
    (2**63 - 1 would read 2**63); every bound the API uses is exact as a float.
    """
    schema = FastAPI.openapi(app)
    write_integer_bounds_as_integers(schema)
    return schema


def write_integer_bounds_as_integers(node: Any) -> None:
    if isinstance(node, dict):
        if node.get("type") == "integer":
            for key in INTEGER_BOUNDS:
                if isinstance(node.get(key), float):
                    node[key] = int(node[key])
        for value in node.values():
            write_integer_bounds_as_integers(value)
    elif isinstance(node, list):
        for value in node:
            write_integer_bounds_as_integers(value)


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, for any input: the values it echoes may be ones JSON cannot carry."""
    detail = jsonable_encoder(printable(exc.errors()))
    return JSONResponse(status_code=422, content={"detail": detail})


def printable(value: Any) -> Any:
    """`value` with what JSON cannot carry spelled out: NaN and infinities, bytes
    that are not UTF-8, lone surrogates."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="backslashreplace")
    if isinstance(value, str):
        return value.encode("utf-8", errors="backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {printable(key): printable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [printable(item) for item in value]
    return value


async def http_error(
    request: Request, exc: StarletteHTTPException, *, routes: Sequence[BaseRoute]
) -> Response:
    """FastAPI's HTTP error response, with a 405's `Allow` naming every method of the path.

    Each method of a path is its own route, and Starlette's 405 lists only the
    methods of the first route that matched the path.
    """
    if exc.status_code == 405:
        allow = ", ".join(allowed_methods(request, [*request.app.routes, *routes]))
        exc.headers = {**(exc.headers or {}), "Allow": allow}
    return await http_exception_handler(request, exc)


def allowed_methods(request: Request, routes: Sequence[BaseRoute]) -> list[str]:
    methods: set[str] = set()
    for route in routes:
        if isinstance(route, Route) and route.matches(request.scope)[0] is not Match.NONE:
            methods.update(route.methods or ())
    return sorted(methods)
