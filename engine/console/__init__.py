"""The web console: a small server-rendered console (Starlette + Jinja2,
no front-end build step, no inline JavaScript; everything works with
JavaScript off) over a state file.

- :mod:`engine.console.app`: the routes (pages, forms, signed approval
  links, the approval API) and :func:`create_console`;
- :mod:`engine.console.views`: what each page shows, read from the store;
- :mod:`engine.console.chart`: a target's forecast band vs actual vs
  capacity with scale events, as server-rendered SVG.

Served standalone by ``forescale console --config FILE`` or mounted by the
daemon on its HTTP server; its security (tokens, sessions, CSRF, links,
rate limit, headers) is :mod:`engine.auth`.
"""

from .app import Console, create_console

__all__ = ["Console", "create_console"]
