"""Restore templates completed with the optimizer state that torch optimizers create lazily.

A torch optimizer fills `optimizer.state` at its first `step()`, so a freshly built agent's
`optimizer.state_dict()` has `"state": {}` where the checkpoint of a trained one has Adam's
moments: restoring into the fresh agent's structure would refuse it. `complete_optimizer_state`
finds such optimizer state dicts (a mapping with `"state"` and `"param_groups"`) in a
template, and adds the per-parameter entries the checkpoint holds for parameters the template's
own `param_groups` list. Nothing else is filled in: any other difference still raises.
No framework is imported; this is plain tree logic.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["complete_optimizer_state"]


def _is_optimizer_state_dict(node: Any) -> bool:
    if not isinstance(node, Mapping) or set(node) != {"state", "param_groups"}:
        return False
    groups = node["param_groups"]
    return (
        isinstance(node["state"], Mapping)
        and isinstance(groups, list | tuple)
        and all(isinstance(g, Mapping) and "params" in g for g in groups)
    )


def complete_optimizer_state(like: Any, stored: Any) -> tuple[Any, list[str]]:
    """`like` with the lazily created optimizer state entries that `stored` has and it lacks.

    Args:
        like: a restore template, e.g. a freshly built agent's `state_dict()`.
        stored: the same tree as restored without a template.

    Returns:
        `(template, filled)`: a new template (the nodes of `like` on the way to a filled
        optimizer are copied, `like` itself is not changed) and the paths of the optimizer
        state dicts that were completed (empty: nothing to fill, `template` is `like`).
    """
    filled: list[str] = []

    def walk(node: Any, saved: Any, path: str) -> Any:
        if _is_optimizer_state_dict(node) and _is_optimizer_state_dict(saved):
            params = {p for group in node["param_groups"] for p in group["params"]}
            missing = {
                key: value
                for key, value in saved["state"].items()
                if key not in node["state"] and key in params
            }
            if not missing:
                return node
            filled.append(path or "/")
            return {**node, "state": {**node["state"], **missing}}
        if isinstance(node, Mapping) and isinstance(saved, Mapping):
            out = {
                k: walk(v, saved[k], f"{path}/{k}") if k in saved else v for k, v in node.items()
            }
            return out if any(out[k] is not node[k] for k in node) else node
        if isinstance(node, list | tuple) and isinstance(saved, list | tuple):
            items = [
                walk(v, saved[i], f"{path}/{i}") if i < len(saved) else v
                for i, v in enumerate(node)
            ]
            if all(a is b for a, b in zip(items, node, strict=True)):
                return node
            if isinstance(node, list):
                return items
            return type(node)(*items) if hasattr(node, "_fields") else tuple(items)
        return node

    return walk(like, stored, ""), filled
