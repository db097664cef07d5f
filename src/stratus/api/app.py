"""The Starlette application: the CVM endpoint at `/` and the data API beside it."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Route

from stratus.api.cvm.endpoint import make_endpoint
from stratus.api.data import routes as data_routes
from stratus.service.context import Services


def create_app(svc: Services) -> Starlette:
    cvm = make_endpoint(svc)
    routes = [Route("/", cvm, methods=["GET", "POST"]), *data_routes.routes(svc)]
    return Starlette(routes=routes)
