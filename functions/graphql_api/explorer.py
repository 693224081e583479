"""The GraphiQL explorer page a browser gets at /<region>/graphql (where the stage allows it).

An ariadne Explorer that loads GraphiQL 3, React and graphql-ws's browser client from
`assets_url`, laid out like a CDN (<package>@<version>/<file>): the public CDN by default, the
local gateway's /_assets in `make dev`, so the explorer also works with no internet access.
(ariadne's own GraphiQL page imports GraphiQL 5 as ES modules from esm.sh, which cannot be
served offline.) Every asset is pinned by Subresource Integrity, so a CDN cannot swap it.

Queries and mutations go over HTTP to the page's own path; subscriptions go over
graphql-transport-ws to `subscriptions_url` (the region's WebSocket API: its own host in AWS,
the gateway's address locally), with the token the user enters in GraphiQL's headers
(`{"Authorization": "Bearer ..."}`) sent in connection_init as `{"authorization": ...}`. The
page's Content-Security-Policy lets it connect to its own origin over HTTP(S) and to that one
WebSocket URL (not 'self', which browsers also let reach any WebSocket path of the same host).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ariadne.explorer import Explorer

DEFAULT_ASSETS_URL = "https://unpkg.com"
_HOST = re.compile(
    r"(?:[A-Za-z0-9-]+\.)*[A-Za-z0-9-]+(?::[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?"
)


@dataclass(frozen=True)
class Asset:
    package: str  # name@version, as npm installs it (devstack/explorer/package.json)
    file: str
    integrity: str  # Subresource Integrity of the file as published

    @property
    def path(self) -> str:
        return f"{self.package}/{self.file}"


REACT = Asset(
    "react@18.3.1",
    "umd/react.production.min.js",
    "sha384-DGyLxAyjq0f9SPpVevD6IgztCFlnMF6oW/XQGmfe+IsZ8TqEiDrcHkMLKI6fiB/Z",
)
REACT_DOM = Asset(
    "react-dom@18.3.1",
    "umd/react-dom.production.min.js",
    "sha384-gTGxhz21lVGYNMcdJOyq01Edg0jhn/c22nsx0kyqP0TxaV5WVdsSH1fSDUf5YJj1",
)
GRAPHIQL = Asset(
    "graphiql@3.8.3",
    "graphiql.min.js",
    "sha384-HbRVEFG0JGJZeAHCJ9Xm2+tpknBQ7QZmNlO/DgZtkZ0aJSypT96YYGRNod99l9Ie",
)
GRAPHIQL_CSS = Asset(
    "graphiql@3.8.3",
    "graphiql.min.css",
    "sha384-Mq3vbRBY71jfjQAt/DcjxUIYY33ksal4cgdRt9U/hNPvHBCaT2JfJ/PTRiPKf0aM",
)
# graphql-ws's own UMD build: the browser client as a global (graphqlWs), no bundler needed.
GRAPHQL_WS = Asset(
    "graphql-ws@6.4.2",
    "umd/graphql-ws.min.js",
    "sha384-mxvR4Mzbsb6QVx/9xI2gtQikQA6m8zMDBFnu3l//4/ROsWt7y2sUGWd+/tYQqDm7",
)
SCRIPTS = (REACT, REACT_DOM, GRAPHIQL, GRAPHQL_WS)
ASSETS = (*SCRIPTS, GRAPHIQL_CSS)

DEFAULT_QUERY = """# Covenant GraphQL: press Ctrl-Enter (or the play button) to run.
{
  countries(first: 5, orderBy: {field: GDP, direction: DESC}) {
    totalCount
    nodes { code name gdpUsd contributionUsd region { code } }
  }
}
"""

# The fetcher: HTTP for queries and mutations, graphql-ws for subscriptions. One WebSocket
# client per token, because graphql-transport-ws authenticates once, in connection_init: a
# new token in the headers editor means a new connection (the old one is closed).
_BOOT = """
const subscriptionUrl = %(subscriptions)s;
let session = { authorization: null, fetcher: null };
function authorizationOf(headers) {
  for (const [name, value] of Object.entries(headers || {})) {
    if (name.toLowerCase() === "authorization") return String(value);
  }
  return "";
}
function fetcherFor(authorization) {
  if (session.fetcher === null || session.authorization !== authorization) {
    if (session.client) session.client.dispose();
    const client = subscriptionUrl && graphqlWs.createClient({
      url: subscriptionUrl,
      connectionParams: authorization ? { authorization } : {},
    });
    session = {
      authorization,
      client,
      fetcher: GraphiQL.createFetcher({
        url: window.location.pathname,
        subscriptionUrl: subscriptionUrl || undefined,
        wsClient: client || undefined,
      }),
    };
  }
  return session.fetcher;
}
const fetcher = (params, options) =>
  fetcherFor(authorizationOf(options && options.headers))(params, options);
ReactDOM.createRoot(document.getElementById("graphiql")).render(
  React.createElement(GraphiQL, { fetcher, defaultQuery: %(query)s })
);
"""

_STYLE = "html, body, #graphiql { height: 100%; margin: 0; }"

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{title}</title>
  {stylesheet}
  <style>{style}</style>
</head>
<body>
  <div id="graphiql">Loading the explorer...</div>
  {scripts}
  <script>{boot}</script>
</body>
</html>
"""


def _script_json(value: Any) -> str:
    return json.dumps(value).replace("</", "<\\/")


def _sha256_source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _source(url: str, schemes: tuple[str, ...]) -> str:
    """`url` as it may appear in a CSP source list (no separators or quotes to break out)."""
    parts = urlsplit(url)
    if parts.scheme not in schemes or not parts.netloc or any(c in url for c in " ;,'\"\n"):
        raise ValueError(f"not a {' or '.join(schemes)} URL for the explorer: {url!r}")
    return url


def page_origin(headers: Mapping[str, str]) -> str | None:
    """The origin the browser opened the page at: its Host, and the scheme API Gateway names in
    X-Forwarded-Proto (https; the local gateway serves plain HTTP and adds none)."""
    lowered = {name.lower(): value for name, value in headers.items()}
    host = lowered.get("host", "")
    scheme = lowered.get("x-forwarded-proto", "http").lower()
    if scheme not in ("http", "https") or not _HOST.fullmatch(host):
        return None
    return f"{scheme}://{host}"


class CovenantExplorer(Explorer):
    def __init__(
        self,
        title: str,
        assets_url: str | None = None,
        subscriptions_url: str | None = None,
        origin: str | None = None,
    ) -> None:
        assets = (assets_url or DEFAULT_ASSETS_URL).rstrip("/")
        # Locally the assets are the gateway's own (/_assets): the page's origin.
        asset_source = (
            "'self'"
            if assets.startswith("/")
            else _source(
                f"{urlsplit(assets).scheme}://{urlsplit(assets).netloc}", ("https", "http")
            )
        )
        connect = [
            _source(origin, ("https", "http")) if origin else "'self'",
            *([_source(subscriptions_url, ("wss", "ws"))] if subscriptions_url else []),
        ]

        def tag(asset: Asset, template: str) -> str:
            href = html.escape(f"{assets}/{asset.path}", quote=True)
            return template.format(href=href, integrity=asset.integrity)

        boot = _BOOT % {
            "subscriptions": _script_json(subscriptions_url),
            "query": _script_json(DEFAULT_QUERY),
        }
        self.page = _PAGE.format(
            title=html.escape(title),
            stylesheet=tag(
                GRAPHIQL_CSS,
                '<link rel="stylesheet" href="{href}" integrity="{integrity}"'
                ' crossorigin="anonymous">',
            ),
            style=_STYLE,
            scripts="\n  ".join(
                tag(
                    asset,
                    '<script src="{href}" integrity="{integrity}" crossorigin="anonymous">'
                    "</script>",
                )
                for asset in SCRIPTS
            ),
            boot=boot,
        )
        self.content_security_policy = "; ".join(
            (
                "default-src 'none'",
                f"script-src {asset_source} {_sha256_source(boot)}",
                f"style-src {asset_source} {_sha256_source(_STYLE)}",
                f"img-src {asset_source} data:",
                f"font-src {asset_source} data:",
                f"connect-src {' '.join(connect)}",
                "base-uri 'none'",
                "form-action 'none'",
                "frame-ancestors 'none'",
            )
        )

    def html(self, request: Any) -> str:
        return self.page
