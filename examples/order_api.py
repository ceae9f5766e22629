"""A stand-in for Acme's order API, for trying the shipped support agent's `order_status` tool:

    python examples/order_api.py        # serves http://127.0.0.1:8099/orders/{number}

Not part of the worker: replace it (and the tool's `url` in prompts/support.md) with your own API.
"""

from __future__ import annotations

from aiohttp import web

ORDERS = {
    "427": {"status": "shipped", "arrives": "Friday"},
    "1001": {"status": "being packed", "arrives": "next Tuesday"},
}


async def order(request: web.Request) -> web.Response:
    found = ORDERS.get(request.match_info["number"])
    if found is None:
        return web.json_response({"error": "no such order"}, status=404)
    return web.json_response({"order": {"number": request.match_info["number"], **found}})


if __name__ == "__main__":
    app = web.Application()
    app.router.add_get("/orders/{number}", order)
    web.run_app(app, host="127.0.0.1", port=8099)
