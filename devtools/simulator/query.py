"""The storage query, ``GET /storage/api/v1/instances?...``: filters, ordering, keyset paging and its links."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote_plus

from .authentication import AuthenticationMixin
from .constants import READ_SCOPE
from .dotnet import _MAX_TICKS, _http_utility_url_encode, _long, _parse_time_us, _ticks, _url_encoder_default
from .http import _bool_param, _empty, _int_param, _json, _json_string, _problem, _Reply, _Request, _Response
from .instance import SimInstance
from .maskinporten import _Token

_QUERY_DATE_OPERATORS = ("eq", "gt", "gte", "lt", "lte")


class QueryMixin(AuthenticationMixin):
    """altinn-storage InstancesController.GetInstances, as the org (a service owner) calls it."""

    def _query(self, req: _Request) -> _Response:
        token = self._altinn_token(req)
        # Model binding first ([ApiController]: a value that does not bind is a 400).
        size = _int_param(req.param("size"), "size")
        flags = _query_flags(req)
        org, app_id = _query_scope(token, req)
        # NormalizeContinuationToken: the (already query-decoded) parameter is URL-decoded once more; the raw
        # value goes back into the self link.
        raw_token = req.param("continuationToken") or None
        token_text = unquote_plus(raw_token) if raw_token else None
        # ApplyQueryDefaults: SortBy (bound from "order") defaults to desc:lastChanged, Size to 100. The owner and
        # its hard-deleted instances: ApplyHardDeleteFilter only filters for callers without a service-owner scope.
        order = req.param("order") or "desc:lastChanged"
        ascending = not order.lower().startswith("desc:")
        size = 100 if size is None else size
        try:
            keyset = self._keyset(token_text)
            date_filters = [(f, op, us) for f in ("lastChanged", "created") for op, us in _date_filters(req.params(f), f)]
        except ValueError as exc:
            # InstanceQueryParameters.GeneratePostgreSQLParameters runs inside PgInstanceRepository's try: its
            # exception becomes InstanceQueryResponse.Exception and the controller answers StatusCode(500, message).
            return _json_string(500, str(exc))
        if size < 0:
            return _json_string(500, "22023: FETCH FIRST count must not be negative")
        where = _InstanceFilter(org, app_id, ascending, keyset, flags, req.param("excludeConfirmedBy"), date_filters)
        with self._lock:
            rows = [(_ticks(inst._last_changed_us), inst._seq, inst) for inst in self.instances.values() if where.admits(inst)]
            # ORDER BY lastChanged (ASC or DESC), id -- the id is ascending in both directions, while the keyset
            # condition for DESC asks for id < the last id: ties at a page boundary are repeated or skipped.
            rows.sort(key=lambda r: (r[0] if ascending else -r[0], r[1]))
            page = rows[:size]
            docs = [inst.to_json(omit_nulls=True) for _, _, inst in page]
        next_token = _next_token(page, size)
        # ExecuteQueryAndBuildResponse: HttpUtility.UrlEncode(token), then BuildRequestLink's QueryBuilder encodes again.
        next_link = self._request_link(req, _http_utility_url_encode(next_token)) if next_token else None
        return _json(200, {"count": len(docs), "self": self._self_link(req, raw_token), "next": next_link, "instances": docs})

    def _self_link(self, req: _Request, raw_token: str | None) -> str:
        if raw_token is None:
            return f"{self.url}{req.raw_path}" + (f"?{req.query_string}" if req.query_string else "")
        return self._request_link(req, raw_token)

    @staticmethod
    def _keyset(token_text: str | None) -> tuple[int, int] | None:
        """(lastChanged ticks, internal id) from a continuation token; None for the first page.

        InstanceQueryParameters.GeneratePostgreSQLParameters: no token -> _continue_idx -1 (first page); a token
        with ";" -> long.Parse of both parts (a bad number throws); a token without ";" sets nothing, so the SQL
        gets NULLs and matches no row (returned as (-1, None) here: an empty page).
        """
        if not token_text:
            return None
        if ";" not in token_text:
            return (-1, -1)
        parts = token_text.split(";")
        ticks, idx = _long(parts[0]), _long(parts[1])
        if not 0 <= ticks <= _MAX_TICKS:
            raise ValueError("Ticks must be between DateTime.MinValue.Ticks and DateTime.MaxValue.Ticks. (Parameter 'ticks')")
        return (ticks, idx)

    def _request_link(self, req: _Request, continuation: str) -> str:
        """InstancesController.BuildRequestLink with a token: the other parameters (QueryHelpers.ParseQuery groups a
        key's values), then continuationToken, each key and value through UrlEncoder.Default."""
        grouped: dict[str, list[str]] = {}
        for key, value in parse_qsl(req.query_string, keep_blank_values=True):
            if key != "continuationToken":
                grouped.setdefault(key, []).append(value)
        pairs = [(k, v) for k, values in grouped.items() for v in values] + [("continuationToken", continuation)]
        query = "&".join(f"{_url_encoder_default(k)}={_url_encoder_default(v)}" for k, v in pairs)
        return f"{self.url}{req.raw_path}?{query}"


def _query_scope(token: _Token, req: _Request) -> tuple[str, str | None]:
    """The (org, appId) asked for, once the caller may query them; raises the error answers."""
    # altinn-storage src/Storage/Controllers/InstancesController.cs GetInstances -> AuthorizeCaller / AuthorizeOrgCaller.
    if not token.org:
        raise _Reply(_problem(400, "Either InstanceOwnerPartyId or InstanceOwnerIdentifier need to be defined."))
    if not token.has_scope(READ_SCOPE):
        raise _Reply(_empty(403))
    org, app_id = req.param("org"), req.param("appId")
    if not org and not app_id:
        raise _Reply(_json_string(400, "Org or AppId must be defined."))
    if not org:
        org = (app_id or "").split("/")[0]
    if token.org.lower() != org.lower():
        if not app_id:
            raise _Reply(_json_string(400, "AppId must be defined."))
        raise _Reply(_empty(403))  # AuthorizeCrossOrgAccess: the simulator's policies give no org another org's apps
    return org, app_id


def _query_flags(req: _Request) -> dict[str, bool | None]:
    return {name: _bool_param(req.param(name), name) for name in ("process.isComplete", "status.isHardDeleted", "status.isArchived", "status.isSoftDeleted")}


def _next_token(page: list[tuple[int, int, SimInstance]], size: int) -> str | None:
    """PgInstanceRepository.GetInstancesInternal: a token whenever the page is full, {LastChanged.Ticks};{id}
    (DateTime.MinValue and -1 for an empty full page)."""
    if len(page) == size:
        return f"{page[-1][0]};{page[-1][1]}" if page else "0;-1"
    return None


def _status_flags_match(flags: dict[str, bool | None], status: dict[str, Any]) -> bool:
    """status.isHardDeleted, status.isArchived, status.isSoftDeleted: each given one equals the instance's."""
    return not any(value is not None and bool(status.get(name.split(".")[1])) != value for name, value in flags.items() if name.startswith("status."))


@dataclass
class _InstanceFilter:
    """The query's WHERE: org and appId, the continuation keyset, the process and status flags,
    excludeConfirmedBy and the date expressions ((field, operator, microseconds))."""

    org: str
    app_id: str | None
    ascending: bool
    keyset: tuple[int, int] | None
    flags: dict[str, bool | None]
    exclude: str | None
    date_filters: list[tuple[str, str, int]]

    def admits(self, inst: SimInstance) -> bool:
        if inst.org != self.org or (self.app_id and f"{inst.org}/{inst.app}" != self.app_id):
            return False
        process, status = inst._process_json(), inst._status_json()
        lc, created = _ticks(inst._last_changed_us), _ticks(inst._created_us)
        # storage.readinstancefromquery_v8 (src/Storage/Migration/FunctionsAndProcedures/readinstancefromquery.sql)
        if not _keyset_admits(self.keyset, self.ascending, lc, inst._seq):
            return False
        complete = self.flags["process.isComplete"]
        if complete is True and process.get("ended") is None:
            return False
        if complete is False and process.get("currentTask") is None:
            return False
        if not _status_flags_match(self.flags, status):
            return False
        if self.exclude and self.exclude in inst.confirmed_by:
            return False
        return all(_compare(op, lc if f == "lastChanged" else created, _ticks(us)) for f, op, us in self.date_filters)


def _date_filters(values: list[str], name: str) -> list[tuple[str, int]]:
    """InstanceQueryParameters.AddDateParamIfNotNull: "op:time"; a value without ":" or a bad time throws."""
    out = []
    for value in values:
        operator, colon, rest = value.partition(":")
        parsed = _parse_time_us(rest) if colon else None
        if parsed is None:
            raise ValueError(f"Invalid date expression: {value} for query key: {name}")
        if operator in _QUERY_DATE_OPERATORS:  # other operators name no SQL parameter and are ignored
            out.append((operator, parsed))
    return out


def _compare(operator: str, left: int, right: int) -> bool:
    return {"eq": left == right, "gt": left > right, "gte": left >= right, "lt": left < right, "lte": left <= right}[operator]


def _keyset_admits(keyset: tuple[int, int] | None, ascending: bool, lc: int, seq: int) -> bool:
    """readinstancefromquery.sql: (_continue_idx <= 0 OR (asc AND (lc > L OR (lc = L AND id > I))) OR
    (desc AND (lc < L OR (lc = L AND id < I)))); a NULL _continue_idx (a token without ";") matches nothing."""
    if keyset is None:
        return True
    ticks, idx = keyset
    if ticks == -1 and idx == -1:
        return False
    if idx <= 0:
        return True
    if ascending:
        return lc > ticks or (lc == ticks and seq > idx)
    return lc < ticks or (lc == ticks and seq < idx)
