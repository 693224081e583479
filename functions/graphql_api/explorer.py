"""The GraphiQL explorer page a browser gets at /<region>/graphql (where the stage allows it).

An ariadne Explorer that loads GraphiQL 3 and React from `assets_url`, laid out like a CDN
(<package>@<version>/<file>): the public CDN by default, the local gateway's /_assets in
`make dev`, so the explorer also works with no internet access. (ariadne's own GraphiQL page
imports GraphiQL 5 as ES modules from esm.sh, which cannot be served offline.)
"""

from __future__ import annotations

import html
import json
from typing import Any

from ariadne.explorer import Explorer

GRAPHIQL = "graphiql@3.8.3"
REACT = "react@18.3.1"
REACT_DOM = "react-dom@18.3.1"
DEFAULT_ASSETS_URL = "https://unpkg.com"

DEFAULT_QUERY = """# Covenant GraphQL: press Ctrl-Enter (or the play button) to run.
{
  countries(first: 5, orderBy: {field: GDP, direction: DESC}) {
    totalCount
    nodes { code name gdpUsd contributionUsd region { code } }
  }
}
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{title}</title>
  <link rel="stylesheet" href="{assets}/{graphiql}/graphiql.min.css">
  <style>html, body, #graphiql {{ height: 100%; margin: 0; }}</style>
</head>
<body>
  <div id="graphiql">Loading the explorer...</div>
  <script src="{assets}/{react}/umd/react.production.min.js"></script>
  <script src="{assets}/{react_dom}/umd/react-dom.production.min.js"></script>
  <script src="{assets}/{graphiql}/graphiql.min.js"></script>
  <script>
    const fetcher = GraphiQL.createFetcher({{ url: window.location.pathname }});
    ReactDOM.createRoot(document.getElementById("graphiql")).render(
      React.createElement(GraphiQL, {{ fetcher, defaultQuery: {query} }})
    );
  </script>
</body>
</html>
"""


class CovenantExplorer(Explorer):
    def __init__(self, title: str, assets_url: str | None = None) -> None:
        self.page = _PAGE.format(
            title=html.escape(title),
            assets=html.escape((assets_url or DEFAULT_ASSETS_URL).rstrip("/"), quote=True),
            graphiql=GRAPHIQL,
            react=REACT,
            react_dom=REACT_DOM,
            query=json.dumps(DEFAULT_QUERY).replace("</", "<\\/"),
        )

    def html(self, request: Any) -> str:
        return self.page
