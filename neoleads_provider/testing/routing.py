"""How a request reaches the state: request parsing, the JSON answers, and the routers' building blocks.

Every router factory (``resources/*.py``, ``control.py``) gets a :class:`RouteContext` and fills a
:class:`SandboxRouter` with it; ``create_sandbox_app`` (``app.py``) includes the routers in order.
Handlers parse bodies themselves instead of using Pydantic models, because the error bodies must be the
real server's, not FastAPI's.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Literal

# Request at run time: FastAPI reads the endpoints' annotations to hand them the request.
from fastapi import APIRouter, Request
from starlette.datastructures import UploadFile
from starlette.responses import JSONResponse, Response

from neoleads_provider.testing.errors import NOT_FOUND_BODY, SandboxError
from neoleads_provider.testing.models import Caller, Upload
from neoleads_provider.testing.values import cast_id

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from neoleads_provider.testing.app import FaultInjector, RequestLog
    from neoleads_provider.testing.delivery import WebhookDispatcher
    from neoleads_provider.testing.state import SandboxState

    Handler = Callable[..., Awaitable[Response]]

CONTROL_PREFIX = "/_sandbox"
API_PREFIX = "/api/v1"
ACCOUNT_PREFIX = "/api/v1/accounts/{account_id}"
JSON_MEDIA_TYPE = "application/json; charset=utf-8"


class RailsJSONResponse(JSONResponse):
    """Compact JSON with Rails' content type."""

    media_type = JSON_MEDIA_TYPE

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def json_response(content: Any, status: int = 200) -> Response:
    return RailsJSONResponse(content, status_code=status)


def empty_response(status: int = 200) -> Response:
    return Response(content=b"", status_code=status)


# --------------------------------------------------------------------------------------------------------------
# Request helpers
# --------------------------------------------------------------------------------------------------------------


def _bad_request() -> SandboxError:
    return SandboxError(400, {"status": 400, "error": "Bad Request"})


def _nest(target: dict[str, Any], key: str, value: Any) -> None:
    """Place a Rack-style form key (``a``, ``a[]``, ``a[b]``, ``a[b][]``) into nested params."""
    if "[" not in key or not key.endswith("]"):
        target[key] = value
        return
    head, _, rest = key.partition("[")
    parts = [head, *rest[:-1].split("][")]
    node: Any = target
    for index, part in enumerate(parts[:-1]):
        following = parts[index + 1]
        container = node.get(part)
        if following == "":
            if not isinstance(container, list):
                container = []
                node[part] = container
            container.append(value)
            return
        if not isinstance(container, dict):
            container = {}
            node[part] = container
        node = container
    node[parts[-1]] = value


async def read_params(request: Request) -> tuple[dict[str, Any], list[Upload]]:
    """Merge query parameters with a JSON or multipart body, as Rails' ``params`` does."""
    params: dict[str, Any] = dict(request.query_params)
    uploads: list[Upload] = []
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data") or content_type.startswith(
        "application/x-www-form-urlencoded"
    ):
        form = await request.form(max_files=1000, max_fields=10_000)
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read()
                upload = Upload(
                    value.filename or "file", value.content_type or "application/octet-stream", data
                )
                if key in ("attachments[]", "attachments"):
                    uploads.append(upload)
                continue
            _nest(params, key, value)
        return params, uploads
    body = await request.body()
    if body.strip():
        try:
            parsed = json.loads(body)
        except ValueError:
            raise _bad_request() from None
        if isinstance(parsed, dict):
            params.update(parsed)
    return params, uploads


def path_id(text: str) -> int:
    """A record id from the path; text that cannot name a record is a 404, as an unknown id is."""
    record_id = cast_id(text)
    if record_id is None:
        raise SandboxError(404, NOT_FOUND_BODY)
    return record_id


def request_token(request: Request) -> str | None:
    # Rack maps both "api_access_token" and "api-access-token" to HTTP_API_ACCESS_TOKEN.
    return request.headers.get("api_access_token") or request.headers.get("api-access-token")


# --------------------------------------------------------------------------------------------------------------
# The routers
# --------------------------------------------------------------------------------------------------------------


def _methods(methods: str | list[str]) -> list[str]:
    return [methods] if isinstance(methods, str) else methods


class SandboxRouter(APIRouter):
    """One resource's routes: what each ``router()`` factory in ``resources/`` and ``control.py`` returns.

    :meth:`add` maps a route onto a state method, the common case; :meth:`handler` registers an async function
    for a route that needs more. Either way the endpoint FastAPI sees is defined here and takes only the
    request: the resource modules, which the state imports, then need no FastAPI import of their own, and
    importing the state stays cheap.
    """

    def __init__(self, context: RouteContext, prefix: str) -> None:
        super().__init__(prefix=prefix)
        self.context = context

    def add(
        self,
        methods: str | list[str],
        path: str,
        method: Callable[..., Any],
        *,
        params: Literal["query", "body"] | None = None,
        admin: bool = False,
    ) -> None:
        """Answer ``path`` with ``state.<method>(caller, *path ids[, params])``, as JSON (``None``: empty 200).

        :param method: the state method (a mixin's function, e.g. ``InboxesMixin.show_inbox``); it is looked
            up on the state by name at each request, so a patched state method is the one called.
        :param params: also pass the query parameters (``"query"``) or the merged query and body (``"body"``).
        :param admin: refuse a non-administrator before the body is read.
        """
        context = self.context
        name = method.__name__
        if not callable(getattr(context.state, name, None)):
            raise TypeError(f"the sandbox state has no method {name!r}: is its mixin a base of SandboxState?")

        async def endpoint(request: Request) -> Response:
            path_ids = dict(request.path_params)
            # The caller, then the params, in that order: a refused token is answered before a bad body.
            caller = context.caller(request, path_ids.pop("account_id"))
            if admin:
                context.state.require_admin(caller)
            args: list[Any] = list(path_ids.values())
            if params == "query":
                args.append(dict(request.query_params))
            elif params == "body":
                args.append((await read_params(request))[0])
            answer = getattr(context.state, name)(caller, *args)
            return empty_response() if answer is None else json_response(answer)

        self.add_api_route(path, endpoint, methods=_methods(methods), name=name)

    def handler(self, methods: str | list[str], path: str) -> Callable[[Handler], Handler]:
        """Register the decorated ``async def handler(request, **path_params) -> Response`` for ``path``."""

        def register(function: Handler) -> Handler:
            async def endpoint(request: Request) -> Response:
                return await function(request, **request.path_params)

            self.add_api_route(path, endpoint, methods=_methods(methods), name=function.__name__)
            return function

        return register


class RouteContext:
    """What every router factory gets: the state, the app's faults and logs, and the request helpers.

    :param reset: what ``POST /_sandbox/reset`` does.
    """

    API_PREFIX = API_PREFIX
    ACCOUNT_PREFIX = ACCOUNT_PREFIX
    CONTROL_PREFIX = CONTROL_PREFIX
    json = staticmethod(json_response)
    empty = staticmethod(empty_response)
    read_params = staticmethod(read_params)
    path_id = staticmethod(path_id)
    token = staticmethod(request_token)

    def __init__(
        self,
        state: SandboxState,
        *,
        faults: FaultInjector,
        requests: RequestLog,
        dispatcher: WebhookDispatcher | None,
        reset: Callable[[], None],
    ) -> None:
        self.state = state
        self.faults = faults
        self.requests = requests
        self.dispatcher = dispatcher
        self.reset = reset

    def router(self, prefix: str = ACCOUNT_PREFIX) -> SandboxRouter:
        """Return a new router for routes below ``prefix`` (by default, an account's)."""
        return SandboxRouter(self, prefix)

    def caller(self, request: Request, account_id: str) -> Caller:
        """Return who calls, in which account: 401 for a bad token or a non-member, 404 for an unknown account."""
        user = self.state.authenticate(request_token(request))
        return self.state.caller(user, account_id)
