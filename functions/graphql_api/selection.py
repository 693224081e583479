"""Which fields a request selects below the field being resolved, so that SQL reads only the
columns the response needs (a description or a timestamp nobody asked for costs transfer and
decoding on every row)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from graphql import FieldNode, FragmentSpreadNode, InlineFragmentNode, SelectionSetNode

from graphql_api.context import Info


def _children(
    selection_sets: Iterable[SelectionSetNode | None],
    fragments: dict[str, Any],
    seen: frozenset[str] = frozenset(),
) -> dict[str, list[SelectionSetNode | None]]:
    """Field name -> the selection sets under it, with fragments (named and inline) expanded."""
    found: dict[str, list[SelectionSetNode | None]] = {}
    for selection_set in selection_sets:
        if selection_set is None:
            continue
        for selection in selection_set.selections:
            if isinstance(selection, FieldNode):
                found.setdefault(selection.name.value, []).append(selection.selection_set)
                continue
            if isinstance(selection, InlineFragmentNode):
                nested = _children([selection.selection_set], fragments, seen)
            elif isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                fragment = fragments.get(name)
                if fragment is None or name in seen:
                    continue
                nested = _children([fragment.selection_set], fragments, seen | {name})
            else:
                continue
            for field, sets in nested.items():
                found.setdefault(field, []).extend(sets)
    return found


def object_fields(info: Info) -> frozenset[str]:
    """The fields selected on the object the current field returns."""
    return frozenset(_children((node.selection_set for node in info.field_nodes), info.fragments))


def connection_fields(info: Info) -> frozenset[str]:
    """The fields selected on the connection the current field returns (totalCount, pageInfo,
    nodes, edges): a row beyond the page is read only for pageInfo, a count only for
    totalCount."""
    return object_fields(info)


def _node_children(info: Info) -> dict[str, list[SelectionSetNode | None]]:
    top = _children((node.selection_set for node in info.field_nodes), info.fragments)
    node_sets = list(top.get("nodes", []))
    node_sets += _children(top.get("edges", []), info.fragments).get("node", [])
    return _children(node_sets, info.fragments)


def node_fields(info: Info) -> frozenset[str]:
    """The fields selected on the nodes of the connection the current field returns, under
    `nodes` and under `edges { node }`."""
    return frozenset(_node_children(info))


def node_object_fields(info: Info, field: str) -> frozenset[str] | None:
    """The fields selected on the object `field` of those nodes returns (every alias of it,
    together); None when no node selects it."""
    under = _node_children(info).get(field)
    return None if under is None else frozenset(_children(under, info.fragments))
