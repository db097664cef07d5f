"""The Starlette application: the CVM endpoint at `/`, the data API beside it, `/metrics`, and the console
at /console/."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from stratus.api.cvm.endpoint import make_endpoint
from stratus.api.data import routes as data_routes
from stratus.api.metrics import Observe, make_metrics_endpoint
from stratus.console import web as console_web
from stratus.service.context import Services


def create_app(svc: Services) -> Starlette:
    cvm = make_endpoint(svc)
    routes = [Route("/", cvm, methods=["GET", "POST"]), *data_routes.routes(svc), *console_web.routes()]
    if svc.settings.metrics.allow:  # an empty allow list: not served at all
        routes.append(Route("/metrics", make_metrics_endpoint(svc), methods=["GET"]))
    return Starlette(routes=routes, middleware=[Middleware(Observe)])
