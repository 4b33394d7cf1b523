"""The app's functions as the host indexes them (``app.get_functions()``: names, triggers, bindings,
auth levels), refusing, with a message saying so, anything this app does not use."""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import azure.functions as func
from azure.functions.decorators.core import Binding
from azure.functions.decorators.function_app import Function


def _plain(value: Any) -> Any:
    """Enum members (HttpMethod.POST, AuthLevel.FUNCTION) to their plain value."""
    return getattr(value, "value", value)


def _resolve_setting(value: str) -> str:
    """Replace ``%NAME%`` by the environment variable NAME, as the host does."""

    def lookup(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise ValueError(f"app setting {name} is not set (used as %{name}%)")
        return os.environ[name]

    return re.sub(r"%([^%]+)%", lookup, value)


@dataclass
class _Function:
    name: str
    user_function: Callable[..., Any]
    trigger: dict[str, Any]
    # HTTP
    route: str | None = None  # a literal path below the route prefix, no leading or trailing "/"
    methods: frozenset[str] | None = None  # None: any
    auth_level: str = "function"
    # queue trigger
    queue_name: str = ""

    @property
    def trigger_type(self) -> str:
        return str(self.trigger["type"])

    @property
    def arg_name(self) -> str:
        return str(self.trigger["name"])


_SUPPORTED = (
    "LocalHost plays the Functions host for this app only: HTTP triggers on literal routes, queue triggers and "
    "timer triggers, each a plain `def` whose only parameter is its trigger's"
)


def _refuse(name: str, what: str) -> ValueError:
    return ValueError(f"function {name}: {what} is not supported. {_SUPPORTED}.")


def _load_functions(app: func.FunctionApp) -> list[_Function]:
    # FunctionApp.get_functions() (azure-functions 1.26) refuses a second call: it remembers
    # the names it validated and reports them as duplicates. Let it validate from scratch and
    # leave the app as we found it, so that several LocalHosts (or the real worker) can index it.
    saved = getattr(app, "functions_bindings", None)
    app.functions_bindings = None
    try:
        functions = app.get_functions()
    finally:
        app.functions_bindings = saved
    default_auth = str(_plain(app.auth_level)).lower()
    return [_load_function(f, default_auth) for f in functions]


def _load_function(f: Function, default_auth: str) -> _Function:
    name = f.get_function_name()
    user_function = f.get_user_function()
    trigger = f.get_trigger()
    if name is None or trigger is None:
        raise ValueError(f"function {user_function!r} has no name or no trigger")
    trigger_dict = {k: _plain(v) for k, v in trigger.get_dict_repr().items()}
    kind = trigger_dict["type"]
    if kind not in ("httpTrigger", "queueTrigger", "timerTrigger"):
        raise _refuse(name, f"a {kind!r} trigger")
    _check_bindings(name, kind, trigger_dict["name"], f.get_bindings())
    _check_signature(name, user_function, trigger_dict["name"])

    fn = _Function(name=name, user_function=user_function, trigger=trigger_dict)
    if kind == "httpTrigger":
        route = str(trigger_dict.get("route") or name).strip("/")
        if "{" in route or "}" in route:
            raise _refuse(name, f"route template {route!r}")
        fn.route = route
        methods = trigger_dict.get("methods")
        fn.methods = frozenset(str(_plain(m)).upper() for m in methods) if methods else None
        fn.auth_level = str(trigger_dict.get("authLevel") or default_auth).lower()
    elif kind == "queueTrigger":
        fn.queue_name = _resolve_setting(str(trigger_dict["queueName"]))
    return fn


def _check_bindings(name: str, kind: str, trigger_name: str, bindings: Iterable[Binding]) -> None:
    """Only the trigger, and for HTTP the response (``$return``): no output bindings."""
    for binding in bindings:
        b = {k: _plain(v) for k, v in binding.get_dict_repr().items()}
        if b["name"] == trigger_name and b["type"] == kind:
            continue
        if kind == "httpTrigger" and b["type"] == "http" and b["name"] == "$return":
            continue  # the HTTP response: what the function returns
        raise _refuse(name, f"binding {b['name']!r} ({b['type']}, an output binding)")


def _check_signature(name: str, user_function: Callable[..., Any], trigger_name: str) -> None:
    """A plain ``def`` whose only parameter is the trigger's."""
    if inspect.iscoroutinefunction(user_function) or inspect.isasyncgenfunction(user_function):
        raise _refuse(name, "an `async def` function")
    for pname in inspect.signature(user_function).parameters:
        if pname == "context":
            raise _refuse(name, "func.Context injection (parameter 'context')")
        if pname != trigger_name:
            raise _refuse(name, f"parameter {pname!r}, which no trigger binds")
    if trigger_name not in inspect.signature(user_function).parameters:
        raise ValueError(f"function {name}: the trigger's parameter {trigger_name!r} is missing")
